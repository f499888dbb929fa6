#!/usr/bin/env bash
# Soak test: a mixed load against the release binary for a given time, sampled every 5 s.
#
#   scripts/soak.sh DURATION        DURATION: seconds, or 60s, 30m, 1h
#
# The server runs with its history in SQLite in a temporary directory and --rate-limit 0;
# `loadgen --mode soak` (src/bin/loadgen/soak.rs) drives it: 100 chatters over 20 rooms
# (200 msg/s in total), visitors that join, leave and resume with ?since=, slow readers,
# connections ended by a TCP reset mid-conversation, a flooder (bursts of 5,000 posts as
# fast as a window of 200 allows, reading its own copies) and a scroll-back reader on
# /api/rooms/<room>/messages. Every 5 s it samples the server's RSS and descriptors (/proc),
# a few /metrics counters and the chat clients' delivery latency p50/p99 into
# bench/soak/soak-<SECONDS>s.csv, and prints a summary at the end.
#
# It fails (exit 1) when a message was lost or duplicated (every connection checks gapless
# ids for the span it was connected, welcome histories after ?since=, own posts coming back,
# scroll-back pages), or when the server's descriptors are not back at their baseline
# within 15 s of the last client leaving. Runs of 10 minutes or more also fail when the
# RSS slope after warm-up (the first 20% left out; least squares over the samples) is above
# 1 MiB per 10 minutes.
#
# Environment: CHATROOM_BIN (default target/release/chatroom; built when missing),
# LOADGEN_BIN (default target/release/loadgen; built when missing), SOAK_OUT (the CSV's
# directory, default bench/soak).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "soak: $*" >&2; exit 2; }
[ $# -eq 1 ] || die "usage: scripts/soak.sh DURATION (e.g. 60, 60s, 30m, 1h)"
case "$1" in
  *[!0-9smh]* | '' ) die "DURATION must be seconds or end in s, m or h (got $1)" ;;
  *h) SECS=$(( ${1%h} * 3600 )) ;;
  *m) SECS=$(( ${1%m} * 60 )) ;;
  *s) SECS=${1%s} ;;
  *)  SECS=$1 ;;
esac
[ "$SECS" -ge 10 ] 2>/dev/null || die "DURATION must be at least 10 s (got $1)"

if [ -z "${CHATROOM_BIN:-}" ] && [ ! -x target/release/chatroom ]; then
  cargo build --release --locked --bin chatroom
fi
if [ -z "${LOADGEN_BIN:-}" ] && [ ! -x target/release/loadgen ]; then
  cargo build --release --locked --bin loadgen
fi
CHATROOM=${CHATROOM_BIN:-target/release/chatroom}
LOADGEN=${LOADGEN_BIN:-target/release/loadgen}
[ -x "$CHATROOM" ] || die "$CHATROOM is not an executable"
[ -x "$LOADGEN" ] || die "$LOADGEN is not an executable"
OUT=${SOAK_OUT:-bench/soak}
mkdir -p "$OUT"
CSV="$OUT/soak-${SECS}s.csv"

TMP=$(mktemp -d)
SERVER=""
cleanup() {
  if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

"$CHATROOM" --bind 127.0.0.1:0 --data "$TMP/chatroom.db" --rate-limit 0 2>"$TMP/server.log" &
SERVER=$!
# The server logs its address once it listens; wait for that line (bounded: 30 s).
ADDR=""
for _ in $(seq 300); do
  ADDR=$(grep -o 'listening on http://[0-9.:]*' "$TMP/server.log" | head -n 1 | sed 's|.*http://||') || true
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$TMP/server.log" >&2; die "the server exited at start"; }
  sleep 0.1
done
[ -n "$ADDR" ] || { cat "$TMP/server.log" >&2; die "the server did not listen within 30 s"; }

echo "soak: $SECS s against $CHATROOM (pid $SERVER, $ADDR, SQLite in $TMP), samples in $CSV"
status=0
"$LOADGEN" --mode soak --url "ws://$ADDR" --duration "$SECS" --timeout 30 \
  --server-pid "$SERVER" --csv "$CSV" || status=$?

kill -0 "$SERVER" 2>/dev/null || { echo "soak: the server died during the run; its log:" >&2; tail -n 20 "$TMP/server.log" >&2; status=1; }
kill "$SERVER" 2>/dev/null || true
server_status=0
wait "$SERVER" 2>/dev/null || server_status=$?
SERVER=""
if [ "$server_status" -ne 0 ]; then
  echo "soak: the server exited with status $server_status after SIGTERM; its log:" >&2
  tail -n 20 "$TMP/server.log" >&2
  status=1
fi
# Shown, not judged: the run fails only on what the header says.
if grep -qE ' ERROR |panicked' "$TMP/server.log"; then
  echo "soak: the server logged errors:" >&2
  grep -E ' ERROR |panicked' "$TMP/server.log" | head -n 20 >&2
fi
echo "soak: samples in $CSV; $([ "$status" -eq 0 ] && echo PASS || echo FAIL)"
exit "$status"
