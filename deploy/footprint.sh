#!/usr/bin/env bash
# Measures what the README's "Deployment" section reports: the release
# binary's size, its memory right after start, and how long it takes from
# exec to a /healthz answer.
#
#   bash deploy/footprint.sh [RUNS]     # RUNS start-ups to time (default 50)
#   PORT=18600 bash deploy/footprint.sh # time start-ups on another free port
#
# The RSS is read from /proc/PID/status once the server has logged its
# "listening on" line (bound to a free port, --bind 127.0.0.1:0). Both
# figures are taken with --data none (no disk), then again with a SQLite
# file in a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}
# Start-ups are timed on a fixed port below the ephemeral range: a busy loop
# of connects to an ephemeral port can connect a socket to itself.
timing_port=${PORT:-18555}
bin=target/release/chatroom
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cargo build --release --bin chatroom >/dev/null 2>&1 || cargo build --release --bin chatroom
if (exec 3<>"/dev/tcp/127.0.0.1/$timing_port") 2>/dev/null; then
    echo "port $timing_port is in use; run with PORT=<a free port below 32768>" >&2
    exit 1
fi
echo "binary: $(stat -c %s "$bin") bytes ($bin)"

# Starts the server on a free port with "$@" and waits for its listening
# line; sets PID. stderr (the log) goes to $tmp/log.
start() {
    : >"$tmp/log"
    "$bin" --bind 127.0.0.1:0 "$@" 2>"$tmp/log" &
    PID=$!
    until grep -q 'listening on' "$tmp/log" 2>/dev/null; do
        kill -0 "$PID" 2>/dev/null || { cat "$tmp/log" >&2; exit 1; }
        sleep 0.001
    done
}

# Milliseconds from exec to the first answered GET /healthz on port $1,
# for one start with the rest of the arguments. The client is bash's own
# /dev/tcp, retried in a busy loop: no process is forked while the clock runs.
startup() {
    local port=$1 t0 t1 pid
    shift
    t0=$EPOCHREALTIME
    "$bin" --bind "127.0.0.1:$port" "$@" 2>/dev/null &
    pid=$!
    until exec 3<>"/dev/tcp/127.0.0.1/$port"; do
        kill -0 "$pid" 2>/dev/null || { echo "chatroom exited at start" >&2; exit 1; }
    done 2>/dev/null
    printf 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
    read -r status <&3
    t1=$EPOCHREALTIME
    exec 3<&-
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    [[ $status == *" 200 "* ]] || { echo "unexpected answer: $status" >&2; exit 1; }
    echo "($t1 - $t0) * 1000" | bc -l
}

for mode in none sqlite; do
    if [ "$mode" = none ]; then args=(--data none); else args=(--data "$tmp/chatroom.db"); fi
    start "${args[@]}"
    echo "idle RSS (--data $mode): $(awk '/VmRSS/ {print $2, $3}' "/proc/$PID/status")"
    kill "$PID"
    wait "$PID" || true
    for _ in $(seq "$runs"); do startup "$timing_port" "${args[@]}"; done | sort -n >"$tmp/times"
    awk -v mode="$mode" '{ t[NR] = $1 } END {
        printf "start-up to /healthz (--data %s, %d runs): min %.1f ms, median %.1f ms, p90 %.1f ms\n",
            mode, NR, t[1], t[int((NR + 1) / 2)], t[int(NR * 0.9)]
    }' "$tmp/times"
done
