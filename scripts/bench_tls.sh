#!/usr/bin/env bash
# TLS, measured: the same loads over ws:// and over wss:// (--tls-cert/--tls-key, an
# ECDSA P-256 certificate made for the run), in one run, rounds alternated.
#
#   scripts/bench_tls.sh [--repeat N] [--no-build] [--out FILE]
#   (SCENS="a d" runs only those scenarios)
#
# Writes FILE (default bench/tls.md): medians of N runs (default 3) [min–max] of
#   a       1 room x 1,000 clients, 10 senders, 200 messages each: server CPU per delivery
#   echo    100 clients on /ws/echo, closed loop, 5 s: round trips/s, server CPU per round trip
#   churn   50 concurrent connect/welcome/post/await-own-copy/close cycles, 5 s: server CPU
#           per cycle; over TLS once with full handshakes (loadgen --tls-no-resume) and once
#           resuming by ticket; TLS minus plain is what a handshake costs the server
#   d       10,000 idle WebSockets over 100 rooms: server RSS per connection
#   burst   1,000 clients connecting at once (each a full handshake), one per room (so that
#           no join's presence fan-out hides the handshakes): the loop turn's p99 and max
#           while they come in, from /metrics' turn histogram (on --admin-bind); loadgen keeps
#           200 handshakes in flight
# Server: target/release/chatroom --data none --rate-limit 0 [TLS], pinned to core 0;
# loadgen on core 1. The binary's size is printed too.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPEAT=3
BUILD=1
OUT="$ROOT/bench/tls.md"
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT=${2:?}; shift ;;
    --no-build) BUILD=0 ;;
    --out) OUT=${2:?}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_tls: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$BUILD" = 1 ]; then (cd "$ROOT" && cargo build --release --bins 2>&1 | tail -n 1) >&2; fi
TMP=$(mktemp -d /tmp/bench_tls.XXXXXX)
SRV_PID=""
cleanup() { [ -z "$SRV_PID" ] || kill "$SRV_PID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
cp "$ROOT/target/release/chatroom" "$ROOT/target/release/loadgen" "$TMP/"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null

args_for() {
  case "$1" in
    a)     echo "--mode room --clients 1000 --rooms 1 --senders 10 --messages 200 --warmup 10" ;;
    echo)  echo "--mode echo --clients 100 --duration 5" ;;
    churn) echo "--mode churn --clients 50 --duration 5" ;;
    d)     echo "--mode idle --clients 10000 --rooms 100 --duration 2 --timeout 120" ;;
    burst) echo "--mode idle --clients 1000 --rooms 1000 --duration 1 --timeout 60" ;;
  esac
}

# Prometheus text of the admin listener's /metrics.
scrape() { curl -s "http://$1/metrics"; }

run_one() { # variant scenario round; variant: plain, tls, tls-full
  local variant=$1 scen=$2 round=$3 log="$TMP/srv.log" tls_args=() scheme=ws extra=""
  if [ "$variant" != plain ]; then
    tls_args=(--tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem")
    scheme=wss
  fi
  [ "$variant" = tls-full ] && extra="--tls-no-resume"
  # The burst's 1,000 connections each make a full handshake.
  [ "$scen" = burst ] && [ "$variant" != plain ] && extra="--tls-no-resume"
  taskset -c 0 "$TMP/chatroom" --bind 127.0.0.1:0 --admin-bind 127.0.0.1:0 --data none --rate-limit 0 \
    "${tls_args[@]}" >"$log" 2>&1 &
  SRV_PID=$!
  local port="" admin=""
  for _ in $(seq 100); do
    port=$(grep -o 'listening on https\{0,1\}://127.0.0.1:[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    admin=$(grep -o 'admin endpoints on http://127.0.0.1:[0-9]*' "$log" | grep -o '127.0.0.1:[0-9]*$' || true)
    [ -n "$port" ] && [ -n "$admin" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "bench_tls: server did not start" >&2; cat "$log" >&2; exit 1; }
  local out="$TMP/$scen-$variant-$round"
  scrape "$admin" >"$out.before"
  # shellcheck disable=SC2046,SC2086
  taskset -c 1 "$TMP/loadgen" --url "$scheme://127.0.0.1:$port" $(args_for "$scen") $extra \
    --server-pid "$SRV_PID" --json >"$out.json" || true
  scrape "$admin" >"$out.after"
  kill "$SRV_PID"; wait "$SRV_PID" 2>/dev/null || true; SRV_PID=""
}

variants_for() {
  case "$1" in
    churn) echo "plain tls tls-full" ;;
    *)     echo "plain tls" ;;
  esac
}

SCENS=${SCENS:-a echo churn d burst}
for round in $(seq "$REPEAT"); do
  for scen in $SCENS; do
    for variant in $(variants_for "$scen"); do
      echo "bench_tls: round $round $scen $variant" >&2
      run_one "$variant" "$scen" "$round"
    done
  done
done

python3 - "$TMP" "$REPEAT" "$OUT" "$(git -C "$ROOT" rev-parse --short HEAD)" "$(stat -c %s "$TMP/chatroom")" <<'PY'
import json, statistics, sys, datetime, os, re
tmp, repeat, out, commit, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
def load(scen, variant):
    rows = []
    for r in range(1, repeat + 1):
        try:
            row = json.load(open(f"{tmp}/{scen}-{variant}-{r}.json"))
        except (OSError, ValueError):
            continue
        row["_turns"] = turn_quantiles(f"{tmp}/{scen}-{variant}-{r}")
        rows.append(row)
    return rows
def buckets(path):
    b = {}
    for line in open(path):
        m = re.match(r'chatroom_loop_turn_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            b[m.group(1)] = float(m.group(2))
    return b
def turn_quantiles(prefix):
    """p99 of the loop turns between the two scrapes: the upper bound of the bucket it falls in."""
    try:
        before, after = buckets(prefix + ".before"), buckets(prefix + ".after")
    except OSError:
        return None
    les = sorted((float("inf") if k == "+Inf" else float(k), k) for k in after)
    counts = [(le, after[k] - before.get(k, 0)) for le, k in les]
    total = counts[-1][1] if counts else 0
    if total <= 0:
        return None
    p99 = next(le for le, c in counts if c >= 0.99 * total)
    top = next(le for le, c in counts if c >= total)
    deferred = counter(prefix + ".after", "chatroom_tls_handshakes_deferred_total") - counter(prefix + ".before", "chatroom_tls_handshakes_deferred_total")
    return {"turns": total, "p99_ms": p99 * 1e3, "max_bucket_ms": top * 1e3, "deferred": deferred}
def counter(path, name):
    for line in open(path):
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
def fig(rows, f, digits):
    vals = [f(r) for r in rows if r.get("ok") is not False]
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    return f"{statistics.median(vals):.{digits}f} [{min(vals):.{digits}f}–{max(vals):.{digits}f}]"
def ok(rows):
    return f"{sum(1 for r in rows if r.get('ok'))}/{repeat}"
def cpu_per(unit):
    return lambda r: (r["server_cpu_s"] * 1e6 / r[unit]) if r.get(unit) and r.get("server_cpu_s") is not None else None
lines = [f"# TLS: ws:// against wss:// (measured {datetime.date.today()}, commit {commit}, load {os.getloadavg()[0]:.2f})", "",
         f"Command: `bash scripts/bench_tls.sh --repeat {repeat}`. Medians of {repeat} runs [min–max], plain and TLS alternated",
         "each round; server on core 0 (`--data none --rate-limit 0`), loadgen on core 1; TLS with an ECDSA P-256",
         f"certificate (TLS 1.3, AES-128-GCM: loadgen offers suites in a browser's order). Release binary: {size:,} bytes.", "",
         "| scenario | variant | figure | rate | ok runs |", "|---|---|---|---|---|"]
for scen, variant, label, f, rate in [
        ("a", "plain", "server CPU per delivery", lambda r: r.get("server_cpu_us_per_delivery"), "deliveries_per_sec"),
        ("a", "tls", "server CPU per delivery", lambda r: r.get("server_cpu_us_per_delivery"), "deliveries_per_sec"),
        ("echo", "plain", "server CPU per round trip", cpu_per("round_trips"), "round_trips_per_sec"),
        ("echo", "tls", "server CPU per round trip", cpu_per("round_trips"), "round_trips_per_sec"),
        ("churn", "plain", "server CPU per cycle", lambda r: r.get("server_cpu_us_per_cycle"), "cycles_per_sec"),
        ("churn", "tls", "server CPU per cycle (resumed)", lambda r: r.get("server_cpu_us_per_cycle"), "cycles_per_sec"),
        ("churn", "tls-full", "server CPU per cycle (full handshake)", lambda r: r.get("server_cpu_us_per_cycle"), "cycles_per_sec")]:
    rows = load(scen, variant)
    lines.append(f"| {scen} | {variant} | {label}: {fig(rows, f, 3)} µs | {fig(rows, lambda r: r.get(rate), 0)} {rate.replace('_per_sec', '/s')} | {ok(rows)} |")
lines += ["", "| scenario | variant | server RSS per idle connection | ok runs |", "|---|---|---|---|"]
for variant in ["plain", "tls"]:
    rows = load("d", variant)
    lines.append(f"| d | {variant} | {fig(rows, lambda r: (r.get('rss_per_conn_bytes') or 0) / 1024, 3)} KiB | {ok(rows)} |")
lines += ["", "| scenario | variant | loop turns | turn p99 | turn max (bucket) | handshake reads deferred | connects/s | ok runs |", "|---|---|---|---|---|---|---|---|"]
for variant in ["plain", "tls"]:
    rows = load("burst", variant)
    t = lambda k: (lambda r: (r["_turns"] or {}).get(k))
    lines.append(f"| burst | {variant} | {fig(rows, t('turns'), 0)} | ≤ {fig(rows, t('p99_ms'), 1)} ms | ≤ {fig(rows, t('max_bucket_ms'), 1)} ms | {fig(rows, t('deferred'), 0)} | "
                 f"{fig(rows, lambda r: r.get('connects_per_sec'), 0)} | {ok(rows)} |")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
