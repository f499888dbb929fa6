#!/usr/bin/env bash
# permessage-deflate, measured: the same load against --compression off, shared and
# dedicated, in one run, rounds alternated. The load generator offers the extension
# (loadgen --deflate, as a browser does) and inflates what comes compressed.
#
#   scripts/bench_deflate.sh [--repeat N] [--no-build] [--out FILE]
#   (SCENS="a d" runs only those scenarios)
#
# Writes FILE (default bench/deflate.md): medians of N runs (default 3) [min–max] of
#   a      1 room x 1,000 clients, 10 senders, 100-byte messages (under --compression-min):
#          server CPU per delivery, bytes on the wire per delivery
#   a2k    the same with 2 KiB messages (100 per sender)
#   join   churn: 50 concurrent connect/welcome/post/await-own-copy/close cycles into one
#          room, whose 50-message history every welcome carries: server CPU and bytes per cycle
#   d      10,000 idle WebSockets over 100 rooms, each having negotiated the extension where
#          the mode takes it: server RSS per connection
# Server: target/release/chatroom --data none --rate-limit 0 --max-text 4096 --compression MODE,
# pinned to core 0; loadgen on core 1. "Bytes on the wire" is what the load generator read
# off its sockets (wire_bytes_in) over the whole run, divided by deliveries or cycles.
# Message texts are padded with English words (loadgen --filler words), which compress
# about as chat text does (runs of 'x', loadgen's default filler, compress a hundredfold).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPEAT=3
BUILD=1
OUT="$ROOT/bench/deflate.md"
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT=${2:?}; shift ;;
    --no-build) BUILD=0 ;;
    --out) OUT=${2:?}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_deflate: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$BUILD" = 1 ]; then (cd "$ROOT" && cargo build --release --bins 2>&1 | tail -n 1) >&2; fi
TMP=$(mktemp -d /tmp/bench_deflate.XXXXXX)
SRV_PID=""
cleanup() { [ -z "$SRV_PID" ] || kill "$SRV_PID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
cp "$ROOT/target/release/chatroom" "$ROOT/target/release/loadgen" "$TMP/"

args_for() {
  case "$1" in
    a)    echo "--mode room --clients 1000 --rooms 1 --senders 10 --messages 200 --warmup 10 --filler words" ;;
    a2k)  echo "--mode room --clients 1000 --rooms 1 --senders 10 --messages 100 --size 2048 --warmup 10 --filler words" ;;
    join) echo "--mode churn --clients 50 --duration 5 --filler words" ;;
    d)    echo "--mode idle --clients 10000 --rooms 100 --duration 2 --timeout 120" ;;
  esac
}

run_one() { # mode scenario round
  local mode=$1 scen=$2 round=$3 log="$TMP/srv.log"
  taskset -c 0 "$TMP/chatroom" --bind 127.0.0.1:0 --data none --rate-limit 0 --max-text 4096 \
    --compression "$mode" >"$log" 2>&1 &
  SRV_PID=$!
  local port=""
  for _ in $(seq 100); do
    port=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "bench_deflate: server did not start" >&2; cat "$log" >&2; exit 1; }
  # shellcheck disable=SC2046
  taskset -c 1 "$TMP/loadgen" --url "ws://127.0.0.1:$port" $(args_for "$scen") --deflate \
    --server-pid "$SRV_PID" --json >"$TMP/$scen-$mode-$round.json" || true
  kill "$SRV_PID"; wait "$SRV_PID" 2>/dev/null || true; SRV_PID=""
}

SCENS=${SCENS:-a a2k join d}
for round in $(seq "$REPEAT"); do
  for scen in $SCENS; do
    for mode in off shared dedicated; do
      echo "bench_deflate: round $round $scen $mode" >&2
      run_one "$mode" "$scen" "$round"
    done
  done
done

python3 - "$TMP" "$REPEAT" "$OUT" "$(git -C "$ROOT" rev-parse --short HEAD)" <<'PY'
import json, statistics, sys, datetime, os
tmp, repeat, out, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def load(scen, mode):
    rows = []
    for r in range(1, repeat + 1):
        try:
            rows.append(json.load(open(f"{tmp}/{scen}-{mode}-{r}.json")))
        except (OSError, ValueError):
            pass
    return rows
def fig(rows, f, digits):
    vals = [f(r) for r in rows if r.get("ok") is not False]
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    return f"{statistics.median(vals):.{digits}f} [{min(vals):.{digits}f}–{max(vals):.{digits}f}]"
def per(key, unit):
    return lambda r: (r["wire_bytes_in"] / r[unit]) if r.get(unit) else None
lines = [f"# permessage-deflate: off, shared, dedicated (measured {datetime.date.today()}, commit {commit}, load {os.getloadavg()[0]:.2f})", "",
         f"Command: `bash scripts/bench_deflate.sh --repeat {repeat}`. Medians of {repeat} runs [min–max], modes alternated each round;",
         "server on core 0 (`--data none --rate-limit 0`), loadgen on core 1 offering the extension (`--deflate`).", "",
         "| scenario | mode | server CPU | bytes on the wire | rate | ok runs |", "|---|---|---|---|---|---|"]
for scen, unit, cpu_key, label, rate in [("a", "delivered", "server_cpu_us_per_delivery", "per delivery", "deliveries_per_sec"),
                                    ("a2k", "delivered", "server_cpu_us_per_delivery", "per delivery", "deliveries_per_sec"),
                                    ("join", "cycles", "server_cpu_us_per_cycle", "per cycle", "cycles_per_sec")]:
    for mode in ["off", "shared", "dedicated"]:
        rows = load(scen, mode)
        ok = sum(1 for r in rows if r.get("ok"))
        lines.append(f"| {scen} | {mode} | {fig(rows, lambda r: r.get(cpu_key), 3)} µs {label} | "
                     f"{fig(rows, per('wire_bytes_in', unit), 0)} B {label} | "
                     f"{fig(rows, lambda r: r.get(rate), 0)} {rate.replace('_per_sec', '/s')} | {ok}/{repeat} |")
lines += ["", "| scenario | mode | server RSS per idle connection | ok runs |", "|---|---|---|---|"]
for mode in ["off", "shared", "dedicated"]:
    rows = load("d", mode)
    ok = sum(1 for r in rows if r.get("ok"))
    lines.append(f"| d | {mode} | {fig(rows, lambda r: (r.get('rss_per_conn_bytes') or 0) / 1024, 3)} KiB | {ok}/{repeat} |")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
