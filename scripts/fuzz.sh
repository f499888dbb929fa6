#!/usr/bin/env bash
# Run chatroom's fuzz targets (fuzz/, one per parser that reads network bytes).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Builds the targets with cargo-fuzz (libFuzzer + AddressSanitizer) and runs
# each for SECONDS (default 60) on its inputs, one target at a time (0: no
# run, only the FUZZ_MERGE step). Prints one
# summary line per target and exits non-zero if any target crashed, leaked,
# timed out or ran out of memory; the input that did it is kept under
# fuzz/artifacts/<target>/ and the line says how to replay it. CI runs
# `scripts/fuzz.sh 60`.
#
# Inputs, per target:
#   fuzz/seeds/<target>/   hand-written inputs with names that say what they
#                          are (browser requests, handshakes, frames, RESP
#                          replies) and regressions: read, never rewritten.
#   fuzz/corpus/<target>/  what fuzzing found, minimized (`FUZZ_MERGE=1`).
#   fuzz/target/work/<target>/  where a run writes new inputs (ignored by git,
#                          kept between local runs, so a machine keeps learning).
#
# Environment:
#   FUZZ_MERGE=1   after each run, minimize corpus + work into a fresh corpus
#                  and replace fuzz/corpus/<target> with it (what a developer
#                  does before committing a corpus). The merge counts edges
#                  only (-use_counters=0) and picks a set cover
#                  (-set_cover_merge=1): a few hundred small files per target
#                  instead of one per hit-count bucket.
#   FUZZ_RSS_MB    libFuzzer's -rss_limit_mb (default 2048).
#   FUZZ_TIMEOUT   seconds one input may take before it counts as a hang
#                  (libFuzzer's -timeout; default 10).
#
# Needs cargo-fuzz (scripts/install-deps.sh installs it). The toolchain is
# stable: cargo-fuzz passes nightly-only flags (-Zsanitizer), which stable
# rustc accepts with RUSTC_BOOTSTRAP=1, set here for the fuzz build only.
set -euo pipefail

# The targets CI runs, in the order a byte meets them.
ALL_TARGETS=(http_request handshake deflate_offer deflate_frames chat_frame resp token api_body tls_records)

log() { printf 'fuzz: %s\n' "$*"; }
die() { printf 'fuzz: ERROR: %s\n' "$*" >&2; exit 1; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SECS=60
if [ $# -gt 0 ]; then
    case $1 in
        '' | *[!0-9]*) ;;  # not a number: it is a target name
        *) SECS=$1; shift ;;
    esac
fi
[ "$SECS" -gt 0 ] || [ "${FUZZ_MERGE:-0}" = 1 ] || die "SECONDS must be a positive number (0 only with FUZZ_MERGE=1)"
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi
RSS_MB=${FUZZ_RSS_MB:-2048}
TIMEOUT=${FUZZ_TIMEOUT:-10}

cargo fuzz --version >/dev/null 2>&1 || die "cargo-fuzz is not installed: run scripts/install-deps.sh"
for t in "${TARGETS[@]}"; do
    [ -f "fuzz/fuzz_targets/$t.rs" ] || die "no fuzz target '$t' (have: $(cd fuzz/fuzz_targets && ls -- *.rs | sed 's/\.rs$//' | tr '\n' ' '))"
done
export RUSTC_BOOTSTRAP=1

LOGS="fuzz/target/logs"
mkdir -p "$LOGS"

# One build for every target asked for: the first is the slow one (the main
# crate, bundled SQLite under AddressSanitizer); the rest only link.
for t in "${TARGETS[@]}"; do
    log "building $t"
    if ! cargo fuzz build "$t" >"$LOGS/build-$t.log" 2>&1; then
        tail -n 40 "$LOGS/build-$t.log" >&2
        die "cargo fuzz build $t failed (log: $LOGS/build-$t.log)"
    fi
done

# Counts the files of a folder ("0" if it does not exist).
count() { find "$1" -type f 2>/dev/null | wc -l; }
# Bytes of content, not disk blocks (a 40-byte input is not 4 KiB).
kib() { du -s --apparent-size --block-size=1K "$1" 2>/dev/null | cut -f1 || echo 0; }

failed=()
summaries=()
for t in "${TARGETS[@]}"; do
    work="fuzz/target/work/$t"
    corpus="fuzz/corpus/$t"
    seeds="fuzz/seeds/$t"
    mkdir -p "$work" "$corpus" "$seeds"
    runlog="$LOGS/run-$t.log"
    status=0
    if [ "$SECS" -gt 0 ]; then
        log "running $t for ${SECS}s (log: $runlog)"
        # libFuzzer writes new inputs into the first folder and only reads the others.
        cargo fuzz run "$t" "$work" "$corpus" "$seeds" -- \
            -max_total_time="$SECS" -rss_limit_mb="$RSS_MB" -timeout="$TIMEOUT" \
            -print_final_stats=1 >"$runlog" 2>&1 || status=$?
    else
        : >"$runlog"
    fi

    # libFuzzer's last status line, e.g. "#123456 DONE cov: 812 ft: 2411 corp: 180/9Kb ...".
    last=$(grep -aE '^#[0-9]+' "$runlog" | tail -n 1 || true)
    runs=$(grep -aoE '^stat::number_of_executed_units: [0-9]+' "$runlog" | tail -n 1 | grep -oE '[0-9]+$' || true)
    [ -n "$runs" ] || runs=$(printf '%s' "$last" | grep -oE '^#[0-9]+' | tr -d '#' || true)
    cov=$(printf '%s' "$last" | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+' || true)
    ft=$(printf '%s' "$last" | grep -oE 'ft: [0-9]+' | grep -oE '[0-9]+' || true)
    corp=$(printf '%s' "$last" | grep -oE 'corp: [0-9]+/[0-9A-Za-z]+' | cut -d' ' -f2 || true)

    if [ "$status" -eq 0 ]; then
        outcome=ok
    else
        outcome=CRASH
        failed+=("$t")
        artifact=$(grep -aoE 'Test unit written to [^ ]+' "$runlog" | tail -n 1 | cut -d' ' -f5 || true)
        {
            echo "----- $t: last lines of $runlog -----"
            # The panic message and location, or the sanitizer's report.
            grep -aE "panicked at|^thread '|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|SUMMARY:" "$runlog" | head -n 12 || true
            tail -n 15 "$runlog"
            if [ -n "$artifact" ]; then
                echo "input: $artifact"
                echo "replay: RUSTC_BOOTSTRAP=1 cargo fuzz run $t $artifact"
                echo "minimize: RUSTC_BOOTSTRAP=1 cargo fuzz tmin $t $artifact"
            fi
            echo "-----"
        } >&2
    fi

    if [ "${FUZZ_MERGE:-0}" = 1 ] && [ "$outcome" = ok ]; then
        # Merging into an empty folder keeps a small set of inputs that covers
        # every edge the corpus and this run's finds reach together.
        fresh="fuzz/target/merge/$t"
        rm -rf "$fresh"
        mkdir -p "$fresh"
        if cargo fuzz run "$t" "$fresh" "$corpus" "$work" -- -merge=1 -set_cover_merge=1 -use_counters=0 \
                -rss_limit_mb="$RSS_MB" -timeout="$TIMEOUT" >"$LOGS/merge-$t.log" 2>&1; then
            rm -rf "$corpus"
            mv "$fresh" "$corpus"
            rm -rf "$work"
            mkdir -p "$work"
        else
            outcome="ok (merge failed: $LOGS/merge-$t.log)"
        fi
    fi

    files=$(printf 'corpus %s files %s KiB, seeds %s, new %s' \
        "$(count "$corpus")" "$(kib "$corpus")" "$(count "$seeds")" "$(count "$work")")
    if [ "$SECS" -gt 0 ]; then
        line=$(printf '%s: %s, %s runs in %ss, cov %s ft %s, corp %s; %s' \
            "$t" "$outcome" "${runs:-?}" "$SECS" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$files")
    else
        line="$t: merged ($outcome); $files"
    fi
    summaries+=("$line")
    log "$line"
done

echo
log "summary"
for line in "${summaries[@]}"; do log "  $line"; done
if [ ${#failed[@]} -gt 0 ]; then
    die "crashed: ${failed[*]} (inputs in fuzz/artifacts/)"
fi
