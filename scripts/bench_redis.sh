#!/usr/bin/env bash
# Scale-out benchmark: chatroom processes sharing rooms through Redis.
#
#   scripts/bench_redis.sh            # writes bench/redis.md
#
# 1. One room of 1,000 clients, 10 senders, 100-byte messages, closed loop:
#    (a) one process, embedded mode (--data none), and
#    (b) three processes with --redis and --reuse-port on one port (the
#        kernel spreads the 1,000 connections over them) plus one
#        redis-server. Reports deliveries/s, p99 latency, the chatroom
#        processes' CPU and Redis's CPU (utime+stime from /proc).
# 2. Posts one process pushes into Redis: 200 rooms with one member each,
#    every member posting with 32 messages in flight (--window), so the
#    bus pipelines its script calls; once with `--redis-batch 1` (each post
#    its own EVALSHA) and once with the default (a turn's posts to a room in
#    one call); next to `redis-benchmark -P 16 publish` on the same machine.
# Loopback only; every run bounded by loadgen's --timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/chatroom
LOADGEN=target/release/loadgen
[ -x "$BIN" ] && [ -x "$LOADGEN" ] || cargo build --release --bins
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
json_get() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d.get('$1'))"; }
hz=$(getconf CLK_TCK)

out=bench/redis.md
mkdir -p bench
{
echo "# Scale out through Redis (measured $(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "Command: \`bash scripts/bench_redis.sh\`. Server processes on core 0, loadgen and redis-server on core 1."
echo
echo "| setup | deliveries/s | p50 (ms) | p99 (ms) | chatroom CPU (s) | Redis CPU (s) | lost |"
echo "|---|---|---|---|---|---|---|"
} > "$out"

# (a) one process, embedded.
port=$(free_port)
taskset -c 0 "$BIN" --bind "127.0.0.1:$port" --data none --rate-limit 0 2>"$TMP/embedded.log" &
PIDS+=($!); pid=$!
wait_port "$port"
r=$(taskset -c 1 "$LOADGEN" --url "ws://127.0.0.1:$port" --clients 1000 --senders 10 --messages 200 --warmup 5 --server-pid "$pid" --json || true)
echo "$r" >&2
echo "| 1 process, embedded | $(echo "$r" | json_get deliveries_per_sec) | $(echo "$r" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(round(d["p50_us"]/1000,2))') | $(echo "$r" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(round(d["p99_us"]/1000,2))') | $(echo "$r" | json_get server_cpu_s) | - | $(echo "$r" | json_get lost) |" >> "$out"
kill "$pid"; wait "$pid" 2>/dev/null || true

# (b) three processes + Redis, one shared port.
rport=$(free_port)
taskset -c 1 redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
PIDS+=($!); rpid=$!
wait_port "$rport"
port=$(free_port)
procs=()
for i in 1 2 3; do
    taskset -c 0 "$BIN" --bind "127.0.0.1:$port" --reuse-port --redis "redis://127.0.0.1:$rport" --data none --rate-limit 0 2>"$TMP/p$i.log" &
    PIDS+=($!); procs+=($!)
done
wait_port "$port"
for i in 1 2 3; do
    for _ in $(seq 100); do grep -q "redis: subscribed" "$TMP/p$i.log" 2>/dev/null && break; sleep 0.1; done
done
before=0; for p in "${procs[@]}"; do before=$((before + $(cpu_ticks "$p"))); done
rbefore=$(cpu_ticks "$rpid")
r=$(taskset -c 1 "$LOADGEN" --url "ws://127.0.0.1:$port" --clients 1000 --senders 10 --messages 200 --warmup 5 --json || true)
after=0; for p in "${procs[@]}"; do after=$((after + $(cpu_ticks "$p"))); done
rafter=$(cpu_ticks "$rpid")
echo "$r" >&2
echo "| 3 processes + Redis | $(echo "$r" | json_get deliveries_per_sec) | $(echo "$r" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(round(d["p50_us"]/1000,2))') | $(echo "$r" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(round(d["p99_us"]/1000,2))') | $(python3 -c "print(round(($after-$before)/$hz,2))") | $(python3 -c "print(round(($rafter-$rbefore)/$hz,2))") | $(echo "$r" | json_get lost) |" >> "$out"
for p in "${procs[@]}"; do kill "$p"; done

# 2. Posts/s through one process (pipelined on the bus), one post per
#    script call against a turn's posts to a room in one call.
declare -A POSTS
db=1
for batch in 1 100; do
    port=$(free_port)
    # A fresh Redis database each run, so the rooms of earlier runs do not mix in.
    taskset -c 0 "$BIN" --bind "127.0.0.1:$port" --redis "redis://127.0.0.1:$rport/$db" --redis-batch "$batch" \
        --data none --rate-limit 0 2>"$TMP/pub$batch.log" &
    PIDS+=($!); pid=$!
    db=$((db + 1))
    wait_port "$port"
    for _ in $(seq 100); do grep -q "redis: subscribed" "$TMP/pub$batch.log" && break; sleep 0.1; done
    r=$(taskset -c 1 "$LOADGEN" --url "ws://127.0.0.1:$port" --clients 200 --rooms 200 --senders 200 --messages 1000 --window 32 --json || true)
    echo "$r" >&2
    POSTS[$batch]=$(echo "$r" | json_get deliveries_per_sec)
    calls=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^chatroom_redis_posts_total /{p=$2} /^chatroom_redis_post_calls_total /{c=$2} END{if (c>0) printf "%.1f", p/c; else print "n/a"}')
    POSTS[calls$batch]=$calls
    kill "$pid"; wait "$pid" 2>/dev/null || true
done
# (`-t publish` is not a test name every redis-benchmark knows: name the command.)
rb=$(redis-benchmark -p "$rport" -P 16 -n 200000 -q publish chatroom:bench hello 2>/dev/null | tr '\r' '\n' \
    | python3 -c 'import re,sys; m=re.findall(r"([0-9.]+) requests per second", sys.stdin.read()); print(m[-1] if m else "n/a")')
{
echo
echo "| posts into Redis (one process, 200 rooms × 1 member, 32 posts in flight each, received back on the subscription) | posts/s | posts per script call |"
echo "|---|---|---|"
echo "| \`--redis-batch 1\`: each post its own EVALSHA (INCR + XADD + PUBLISH) | ${POSTS[1]} | ${POSTS[calls1]} |"
echo "| default \`--redis-batch 100\`: a turn's posts to a room in one EVALSHA, one PUBLISH | ${POSTS[100]} | ${POSTS[calls100]} |"
echo "| ratio | $(python3 -c "print(round(${POSTS[100]}/${POSTS[1]},2))") | |"
echo "| \`redis-benchmark -P 16 publish\` (bare PUBLISH, no subscriber work) | $rb | |"
echo
echo "Loadgen result lines (JSON) are in the script's output."
} >> "$out"
cat "$out"
