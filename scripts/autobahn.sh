#!/usr/bin/env bash
# Autobahn|Testsuite WebSocket conformance run against a raw echo endpoint.
#
#   scripts/autobahn.sh [--url ws://127.0.0.1:PORT/ws/echo] [--full]
#   scripts/autobahn.sh --tls
#
# Without --url it starts the chatroom server itself
#   ${CHATROOM_BIN:-target/release/chatroom} --bind 127.0.0.1:0 --max-message 16MiB \
#       --max-pending 32MiB --data none
# (build it first: cargo build --release), reads the bound port from its
# "listening on http://127.0.0.1:PORT" log line, tests ws://127.0.0.1:PORT/ws/echo
# and stops the server at the end.
#
# --tls runs the server with TLS (--tls-cert/--tls-key: a self-signed ECDSA
# P-256 certificate made for the run with openssl) and tests
# wss://127.0.0.1:PORT/ws/echo: every case, the 9.* bulk cases (messages of up
# to 16 MiB, many TLS records each) included, but the compression cases 12.*
# and 13.*, which test permessage-deflate, not the transport, and run in the
# plain pass. Report: reports/autobahn-tls/.
#
# Cases: everything ("*"), including the 216 permessage-deflate cases of 12.*
# and 13.* (the server runs with its default --compression shared, and the
# suite offers the extension with every parameter RFC 7692 defines; they take
# most of the run's time, the suite's Python client compressing and masking
# 1,000 messages of up to 128 KiB per case; scripts/test.sh prints it). The 9.* limits/performance
# cases (up to 16 MiB messages, a few minutes) run only with --full.
#
# Pass/fail is decided by scripts/autobahn_check.py on the report: every case
# OK, NON-STRICT or INFORMATIONAL (and a clean close), and no case missing.
# Report: reports/autobahn/index.html (gitignored); logs beside it.
#
# Needs wstest from scripts/install-deps.sh (a Python 2.7 virtualenv in
# ${CHATROOM_DEPS:-/var/cache/chatroom-deps}/autobahn-venv).
#
# Environment:
#   CHATROOM_BIN      server binary (default target/release/chatroom)
#   WSTEST            wstest to run (default: the one install-deps.sh made)
#   AUTOBAHN_TIMEOUT  seconds wstest may take (default 900)
#   SERVER_WAIT       seconds to wait for the server's listening line (default 30)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTDIR="$REPO/reports/autobahn"
DEPS_DIR=${CHATROOM_DEPS:-/var/cache/chatroom-deps}
WSTEST=${WSTEST:-$DEPS_DIR/autobahn-venv/bin/wstest}
AUTOBAHN_TIMEOUT=${AUTOBAHN_TIMEOUT:-900}
SERVER_WAIT=${SERVER_WAIT:-30}

log() { printf 'autobahn: %s\n' "$*"; }
die() { printf 'autobahn: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

URL=""
MODE=default
TLS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --url) [ $# -ge 2 ] || die "--url needs a value"; URL=$2; shift 2 ;;
        --url=*) URL=${1#--url=}; shift ;;
        --full) MODE=full; shift ;;
        --tls) TLS=1; MODE=tls; OUTDIR="$REPO/reports/autobahn-tls"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[ -x "$WSTEST" ] || die "wstest not found at $WSTEST; run scripts/install-deps.sh first"
command -v python3 >/dev/null || die "python3 not found (needed for the report check)"
command -v timeout >/dev/null || die "timeout (coreutils) not found"

# --- cleanup: stop the server we started, remove the temp dir -------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/autobahn.XXXXXX")
SERVER_PID=""
# shellcheck disable=SC2317  # only called through the trap below
cleanup() {
    local rc=$?
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        # Give it a moment to exit on SIGTERM, then insist.
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Fresh output dir: a stale index.json from an earlier run must never be
# mistaken for this run's result.
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"

# --- the server under test -------------------------------------------------
AGENT=chatroom
if [ -z "$URL" ]; then
    BIN=${CHATROOM_BIN:-target/release/chatroom}
    case "$BIN" in /*) ;; *) BIN="$REPO/$BIN" ;; esac
    [ -x "$BIN" ] || die "server binary $BIN not found; build it (cargo build --release) or set CHATROOM_BIN / pass --url"
    SERVER_LOG="$OUTDIR/server.log"
    # Port 0: the OS picks a free port, so parallel runs never collide; the
    # server logs the address it got. 16MiB max message: the 9.* cases send
    # messages of up to 16 MiB. --max-pending 32MiB: the server insists on
    # max-pending >= 2 x max-message (its default is 1MiB), and the echo of a
    # 16 MiB message must fit in the output queue. --data none: nothing
    # persisted.
    : >"$SERVER_LOG"  # exists before we poll it (the child opens it after fork)
    TLS_ARGS=()
    SCHEME=ws
    if [ "$TLS" = 1 ]; then
        command -v openssl >/dev/null || die "openssl not found (needed to make the test certificate)"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
            -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null || die "openssl could not make a certificate"
        TLS_ARGS=(--tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem")
        SCHEME=wss
    fi
    "$BIN" --bind 127.0.0.1:0 --max-message 16MiB --max-pending 32MiB --data none "${TLS_ARGS[@]}" \
        >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    log "started $BIN (pid $SERVER_PID), log $SERVER_LOG"
    addr=""
    tries=$((SERVER_WAIT * 10))  # polls, 0.1 s apart
    while [ -z "$addr" ]; do
        # Strip ANSI colour codes in case the logger adds them, then take
        # HOST:PORT from "listening on http://HOST:PORT".
        # One sed (no pipe into head: under pipefail an early-closed pipe
        # could fail the whole assignment): T skips lines that did not match,
        # q stops at the first that did.
        addr=$(sed -n -e 's/\x1b\[[0-9;]*m//g' \
               -e 's|.*listening on https\{0,1\}://\([^/[:space:]]*:[0-9][0-9]*\).*|\1|;T;p;q' "$SERVER_LOG" || true)
        [ -n "$addr" ] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            tail -n 20 "$SERVER_LOG" >&2
            wait "$SERVER_PID" 2>/dev/null && rc=0 || rc=$?
            SERVER_PID=""
            die "server exited (status $rc) before logging 'listening on http://...'"
        fi
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || { tail -n 20 "$SERVER_LOG" >&2; die "no 'listening on http://HOST:PORT' line in the server log within ${SERVER_WAIT}s"; }
        sleep 0.1
    done
    URL="$SCHEME://$addr/ws/echo"
else
    AGENT=peer
fi

# Only loopback traffic: this suite hammers the server with malformed frames
# and up to 16 MiB messages, and is only ever meant for a server on this
# machine.
host=$(printf '%s\n' "$URL" | sed -n 's|^wss\{0,1\}://\(\[[^]]*\]\)\{0,1\}\([^:/]*\).*|\1\2|p')
if ! [[ $host =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ || $host == localhost || $host == "[::1]" ]]; then
    die "refusing non-loopback URL $URL (host '$host'); use ws://127.0.0.1:PORT/..."
fi

# --- the spec ------------------------------------------------------------
# Keep exclude-cases in sync with MODES in autobahn_check.py.
case "$MODE" in
    full) EXCLUDE='[]' ;;
    tls) EXCLUDE='["12.*", "13.*"]' ;;
    *) EXCLUDE='["9.*"]' ;;
esac
SPEC="$TMP/fuzzingclient.json"
# python3 writes the JSON so the URL and paths are quoted correctly.
python3 - "$SPEC" "$OUTDIR" "$AGENT" "$URL" "$EXCLUDE" <<'EOF'
import json, sys
spec_path, outdir, agent, url, exclude = sys.argv[1:]
spec = {
    "outdir": outdir,
    "servers": [{"agent": agent, "url": url}],
    "cases": ["*"],
    "exclude-cases": json.loads(exclude),
    "exclude-agent-cases": {},
}
with open(spec_path, "w") as f:
    json.dump(spec, f, indent=2)
EOF

# --- run -----------------------------------------------------------------
log "mode $MODE (exclude-cases $EXCLUDE), url $URL, timeout ${AUTOBAHN_TIMEOUT}s"
WSTEST_LOG="$OUTDIR/wstest.log"
start=$SECONDS
set +e
# cwd = temp dir: wstest may drop files in its working directory.
(cd "$TMP" && PYTHONWARNINGS=ignore timeout --kill-after=10 "$AUTOBAHN_TIMEOUT" \
    "$WSTEST" -m fuzzingclient -s "$SPEC") >"$WSTEST_LOG" 2>&1
wstest_rc=$?
set -e
elapsed=$((SECONDS - start))
log "wstest finished in ${elapsed}s (exit $wstest_rc), log $WSTEST_LOG"

fail=0
if [ "$wstest_rc" -eq 124 ] || [ "$wstest_rc" -eq 137 ]; then
    log "wstest timed out after ${AUTOBAHN_TIMEOUT}s"
    fail=1
elif [ "$wstest_rc" -ne 0 ]; then
    tail -n 20 "$WSTEST_LOG" >&2
    log "wstest failed (exit $wstest_rc)"
    fail=1
fi
# wstest does not fail when the server goes away mid-run: it writes a
# truncated report and exits 0. Say so plainly; the case count check below
# fails such a run too.
if grep -q '^Connection to .* failed' "$WSTEST_LOG"; then
    log "$(grep -m1 '^Connection to .* failed' "$WSTEST_LOG")"
fi
if [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
    tail -n 20 "$SERVER_LOG" >&2
    log "the server exited during the run (log $SERVER_LOG)"
    fail=1
fi

if [ -f "$OUTDIR/index.json" ]; then
    python3 "$REPO/scripts/autobahn_check.py" --mode "$MODE" --agent "$AGENT" "$OUTDIR/index.json" || fail=1
else
    log "no report at $OUTDIR/index.json"
    fail=1
fi
exit "$fail"
