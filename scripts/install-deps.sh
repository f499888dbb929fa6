#!/usr/bin/env bash
# Install the external tools chatroom's tests need, and only what is missing.
#
#   scripts/install-deps.sh
#
# - Debian packages: redis-server, chromium, chromium-driver, and openssl (the
#   TLS suites make their throwaway certificates with it) and curl (the
#   benchmark scripts read /metrics with it)
#   (`apt-get update` runs once, and only if one of them is missing).
# - Autobahn|Testsuite (`wstest`, for scripts/autobahn.sh) in a Python 2.7
#   virtualenv at $CHATROOM_DEPS/autobahn-venv, outside the repo so that fresh
#   clones (CI) reuse it. Pins: scripts/autobahn-requirements.txt.
# - cargo-fuzz (for scripts/fuzz.sh), with `cargo install --locked`, pinned below.
#
# Safe to run again and again: a second run prints what is already there and
# changes nothing. Runs as root without a terminal (CI=true, no stdin); as
# another user it uses sudo for apt-get. Exits non-zero with a message saying
# what failed.
#
# Environment:
#   CHATROOM_DEPS  cache folder (default /var/cache/chatroom-deps)
#   PYTHON2        a Python 2.7 interpreter to use (default: newest pyenv 2.7.x,
#                  else python2.7 on PATH)
#   PYTHON3        Python 3 used to run virtualenv (default: python3)
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: ERROR: %s\n' "$*" >&2; exit 1; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REQUIREMENTS="$SCRIPT_DIR/autobahn-requirements.txt"
DEPS_DIR=${CHATROOM_DEPS:-/var/cache/chatroom-deps}
VENV="$DEPS_DIR/autobahn-venv"
# virtualenv itself lives in a small Python 3 venv of its own, so we neither
# touch the system's pip packages nor depend on them.
BOOT_VENV="$DEPS_DIR/virtualenv-py3"
# virtualenv 20.22 dropped support for *creating* Python 2 environments;
# 20.21.1 is the last release that can, and it seeds pip 20.3.4 /
# setuptools 44.1.1 / wheel 0.37.1 from wheels it ships (no extra download).
VIRTUALENV_PIN="virtualenv==20.21.1"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# ---------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------
APT_PACKAGES=(redis-server chromium chromium-driver openssl curl)

is_installed() {
    # dpkg-query prints e.g. "install ok installed"; anything else (absent,
    # half-installed, removed with config left) counts as missing.
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

install_apt() {
    command -v dpkg-query >/dev/null || die "dpkg-query not found: this script expects Debian"
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        is_installed "$p" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "apt: already installed: ${APT_PACKAGES[*]}"
        return
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "apt packages missing (${missing[*]}) and not root, no sudo"
        sudo=(sudo -n)
    fi
    log "apt: installing ${missing[*]}"
    # -qq plus output to a log keeps CI output short; the log is shown on error.
    local aptlog
    aptlog=$(mktemp)
    if ! { "${sudo[@]}" apt-get update -qq &&
           "${sudo[@]}" apt-get install -y -qq "${missing[@]}"; } >"$aptlog" 2>&1; then
        tail -n 40 "$aptlog" >&2
        rm -f "$aptlog"
        die "apt-get failed to install: ${missing[*]}"
    fi
    rm -f "$aptlog"
    for p in "${missing[@]}"; do
        is_installed "$p" || die "apt-get ran but $p is still not installed"
    done
    log "apt: installed ${missing[*]}"
}

# ---------------------------------------------------------------------------
# Python 2.7 virtualenv with autobahntestsuite
# ---------------------------------------------------------------------------
find_python2() {
    if [ -n "${PYTHON2:-}" ]; then
        printf '%s\n' "$PYTHON2"
        return
    fi
    # pyenv ships 2.7.x on these machines (e.g. ~/.pyenv/versions/2.7.18);
    # take the newest one. Debian 12 itself has no python2 package.
    local root=${PYENV_ROOT:-$HOME/.pyenv} best=""
    if [ -d "$root/versions" ]; then
        best=$(find "$root/versions" -mindepth 1 -maxdepth 1 -name '2.7.*' -printf '%f\n' 2>/dev/null |
               sort -V | tail -n 1)
    fi
    if [ -n "$best" ] && [ -x "$root/versions/$best/bin/python2.7" ]; then
        printf '%s\n' "$root/versions/$best/bin/python2.7"
    elif command -v python2.7 >/dev/null; then
        command -v python2.7
    fi
}

# A stamp in the venv records what it was built from; when the pins or the
# interpreter change the venv is rebuilt from scratch. It is written last, so
# a half-finished install (killed, network error) is redone on the next run.
venv_stamp() {
    printf 'python2=%s\nrequirements-sha256=%s\nvirtualenv=%s\n' \
        "$("$1" -c 'import sys; print(sys.version.split()[0])' 2>&1)" \
        "$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)" "$VIRTUALENV_PIN"
}

venv_ok() {
    [ -f "$VENV/.chatroom-stamp" ] &&
        [ "$(cat "$VENV/.chatroom-stamp")" = "$1" ] &&
        [ -x "$VENV/bin/wstest" ] &&
        "$VENV/bin/python" -c 'import autobahntestsuite, autobahn, twisted' >/dev/null 2>&1
}

install_autobahn() {
    [ -f "$REQUIREMENTS" ] || die "missing $REQUIREMENTS"
    local py2 py3=${PYTHON3:-python3}
    py2=$(find_python2)
    [ -n "$py2" ] || die "no Python 2.7 found (looked in ${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.* and PATH); set PYTHON2=/path/to/python2.7"
    "$py2" -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null ||
        die "$py2 is not a working Python 2.7"
    command -v "$py3" >/dev/null || die "$py3 not found (needed to run virtualenv)"

    local stamp
    stamp=$(venv_stamp "$py2")
    if venv_ok "$stamp"; then
        log "autobahn: already installed: $VENV/bin/wstest ($("$VENV/bin/wstest" -a 2>/dev/null | tr -s '\n' ' ' | sed 's/ $//'))"
        return
    fi

    mkdir -p "$DEPS_DIR"
    local piplog="$DEPS_DIR/pip-install.log"

    if ! "$BOOT_VENV/bin/python" -c 'import virtualenv' >/dev/null 2>&1 ||
       [ "$("$BOOT_VENV/bin/python" -m virtualenv --version 2>/dev/null | cut -d' ' -f2)" != "${VIRTUALENV_PIN#virtualenv==}" ]; then
        log "autobahn: installing $VIRTUALENV_PIN (Python 3) into $BOOT_VENV"
        rm -rf "$BOOT_VENV"
        "$py3" -m venv "$BOOT_VENV" || die "python3 -m venv failed"
        "$BOOT_VENV/bin/pip" install -q "$VIRTUALENV_PIN" >"$piplog" 2>&1 ||
            { tail -n 40 "$piplog" >&2; die "pip install $VIRTUALENV_PIN failed (log: $piplog)"; }
    fi

    log "autobahn: creating Python $("$py2" -c 'import sys; print(sys.version.split()[0])') virtualenv $VENV"
    rm -rf "$VENV"
    "$BOOT_VENV/bin/python" -m virtualenv -q -p "$py2" "$VENV" >"$piplog" 2>&1 ||
        { tail -n 40 "$piplog" >&2; die "virtualenv failed to create $VENV (log: $piplog)"; }

    log "autobahn: pip installing $(grep -c '^[A-Za-z]' "$REQUIREMENTS") pinned packages from ${REQUIREMENTS#"$PWD"/} (takes ~1 min)"
    # PIP_CONSTRAINT (not just -c) so that it also applies inside the isolated
    # build environment pip creates for wsaccel's sdist. The Python 2 EOL
    # deprecation banner pip prints is noise; the full log is kept.
    if ! PIP_CONSTRAINT="$REQUIREMENTS" PYTHONWARNINGS=ignore \
            "$VENV/bin/pip" install --no-python-version-warning -r "$REQUIREMENTS" >"$piplog" 2>&1; then
        tail -n 40 "$piplog" >&2
        die "pip install of autobahntestsuite failed (log: $piplog)"
    fi
    "$VENV/bin/python" -c 'import autobahntestsuite, autobahn, twisted' >>"$piplog" 2>&1 ||
        { tail -n 20 "$piplog" >&2; die "autobahntestsuite installed but does not import (log: $piplog)"; }
    printf '%s\n' "$stamp" >"$VENV/.chatroom-stamp"
    log "autobahn: installed $VENV/bin/wstest ($("$VENV/bin/wstest" -a 2>/dev/null | tr -s '\n' ' ' | sed 's/ $//'))"
}

# ---------------------------------------------------------------------------
# cargo-fuzz (for scripts/fuzz.sh)
# ---------------------------------------------------------------------------
# 0.13.2 builds with `--locked` on the stable toolchain; the fuzz build itself
# needs nightly flags, which scripts/fuzz.sh enables with RUSTC_BOOTSTRAP=1.
CARGO_FUZZ_VERSION=0.13.2

install_cargo_fuzz() {
    command -v cargo >/dev/null || die "cargo not found: install Rust first (rustup)"
    local have
    if have=$(cargo fuzz --version 2>/dev/null); then
        log "cargo-fuzz: already installed: $have"
        return
    fi
    log "cargo-fuzz: installing $CARGO_FUZZ_VERSION (cargo install, takes ~3 min)"
    local cargolog
    cargolog=$(mktemp)
    if ! cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked >"$cargolog" 2>&1; then
        tail -n 40 "$cargolog" >&2
        rm -f "$cargolog"
        die "cargo install cargo-fuzz $CARGO_FUZZ_VERSION failed"
    fi
    rm -f "$cargolog"
    have=$(cargo fuzz --version 2>/dev/null) || die "cargo-fuzz installed but \`cargo fuzz\` does not run (is ~/.cargo/bin on PATH?)"
    log "cargo-fuzz: installed $have"
}

main() {
    mkdir -p "$DEPS_DIR" 2>/dev/null || die "cannot create $DEPS_DIR (set CHATROOM_DEPS to a writable folder)"
    # Two runs at once (say two CI steps) would fight over the same venv.
    exec 9>"$DEPS_DIR/.lock"
    if command -v flock >/dev/null; then
        flock -w 900 9 || die "timed out waiting for the lock on $DEPS_DIR/.lock"
    fi
    install_apt
    install_autobahn
    install_cargo_fuzz
    log "done"
}

main "$@"
