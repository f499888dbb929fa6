#!/usr/bin/env bash
# Scale-out benchmark: chatroom processes sharing rooms through Redis.
#
#   scripts/bench_redis.sh            # writes bench/redis.md
#
# 1. Two workloads (one room of 1,000 clients and 10 senders; 100 rooms of
#    10 clients, one sender each; 100-byte messages, closed loop), each on
#    three setups side by side: one process, embedded (--data none); three
#    processes with --redis and --reuse-port on one port (the kernel spreads
#    the connections over them) plus one redis-server; the same three with
#    --redis-cluster on a three-master Redis Cluster. Reports deliveries/s,
#    p99 latency, and the CPU (utime+stime from /proc) of the chatroom
#    processes and of Redis, in all and per delivery.
# 2. Posts one process pushes into Redis (writes bench/redis-batch.md):
#    200 rooms with one member each, every member posting with 32 messages
#    in flight (--window), so the bus pipelines its script calls; once with
#    `--redis-batch 1` (each post its own EVALSHA) and once with the
#    default (a turn's posts to a room in one call), REPEAT times (default
#    3), with BASELINE_BIN's binary too if set; next to `redis-benchmark
#    -P 16 publish` on the same machine. POSTS_ONLY=1 runs this alone:
#
#   POSTS_ONLY=1 BASELINE_BIN=/tmp/chatroom-base scripts/bench_redis.sh
#
# 3. Rooms served by one process only (writes bench/redis-rooms.md): two
#    processes on one Redis; every member of the busy rooms sits on A (200
#    clients over 20 rooms, 20 senders, 2,000 messages/s offered, open
#    loop), while B serves 50 idle members in rooms of its own. Reports A's
#    and B's CPU during the run, and B's CPU over as long again with no
#    traffic anywhere (its idle level). With BASELINE_BIN set, the same run
#    with that binary too, for comparison: e.g. a build that subscribes every
#    process to every message. ROOMS_ONLY=1 runs this scenario alone:
#
#   ROOMS_ONLY=1 BASELINE_BIN=/tmp/chatroom-base-35c38a0 scripts/bench_redis.sh
#
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
# metric PORT NAME: a value from the server's /metrics ("n/a" if it has none).
metric() {
    python3 - "$1" "$2" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
print(next((l.split()[1] for l in text.splitlines() if l.startswith(sys.argv[2] + " ")), "n/a"))
PY
}
wait_subscribed() { for _ in $(seq 100); do grep -q "redis: subscribed" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
secs() { python3 -c "print(round($1/$hz,2))"; }
# children_us FILE: CPU (user + system, in µs) of the shell's ended children,
# from what `times > FILE` (a builtin: run in this shell, not a subshell)
# wrote; taken before and after a command substitution, the difference is
# what that command took.
children_us() { tail -1 "$1" | awk '{ split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * 1e6 }'; }
hz=$(getconf CLK_TCK)

if [ -z "${ROOMS_ONLY:-}" ] && [ -z "${POSTS_ONLY:-}" ]; then

out=bench/redis.md
mkdir -p bench
{
echo "# Scale out through Redis (measured $(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "Command: \`bash scripts/bench_redis.sh\`. Server processes on core 0, loadgen and redis-server on core 1."
} > "$out"

# ready PORT: waits until the server says Redis (or the cluster) is up.
ready() {
    for _ in $(seq 200); do
        curl -s "http://127.0.0.1:$1/readyz" | grep -q '"redis":"up"' && return 0
        curl -s "http://127.0.0.1:$1/readyz" | grep -q '"redis":"disabled"' && return 0
        sleep 0.1
    done
    return 1
}
# row LABEL DELIVERED-JSON CHATROOM_TICKS REDIS_TICKS: one table row, with
# CPU per delivery for chatroom and for Redis.
row() {
    python3 - "$1" "$2" "$3" "$4" "$hz" <<'PY'
import json, sys
label, r, ct, rt, hz = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
d = max(r.get("delivered") or 0, 1)
redis_s = "-" if rt == "-" else round(int(rt) / hz, 2)
redis_us = "-" if rt == "-" else round(int(rt) / hz * 1e6 / d, 3)
print(f"| {label} | {r['deliveries_per_sec']:.0f} | {r['p99_us']/1000:.2f} | {ct/hz:.2f} | {ct/hz*1e6/d:.3f} | {redis_s} | {redis_us} | {r['lost']} |")
PY
}
# A Redis Cluster of three masters (no replicas) on free ports, on core 1.
start_cluster() {
    local seeds=() ports=()
    for i in 1 2 3; do
        local p
        while :; do p=$(free_port); [ "$p" -lt 55000 ] && ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null && break; done
        mkdir -p "$TMP/node$i"
        taskset -c 1 redis-server --port "$p" --bind 127.0.0.1 --dir "$TMP/node$i" --cluster-enabled yes \
            --cluster-config-file nodes.conf --cluster-node-timeout 1000 --cluster-require-full-coverage no \
            --save '' --appendonly no --daemonize no >/dev/null &
        PIDS+=($!); CLUSTER_PIDS+=($!)
        wait_port "$p"
        ports+=("$p"); seeds+=("127.0.0.1:$p")
    done
    redis-cli --cluster create "${seeds[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
    for p in "${ports[@]}"; do
        for _ in $(seq 100); do redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.1; done
    done
    CLUSTER_SEEDS=$(IFS=,; echo "${seeds[*]}")
    CLUSTER_PORTS=("${ports[@]}")
}

# The two workloads: one big room (every post to 1,000 members, one
# shard), and 100 rooms of 10 (spread over the shards).
WORKLOADS=("1 room x 1,000 clients, 10 senders|--clients 1000 --rooms 1 --senders 10 --messages 200 --warmup 5"
           "100 rooms x 10 clients, 100 senders|--clients 1000 --rooms 100 --senders 100 --messages 200 --warmup 5")
rport=$(free_port)
taskset -c 1 redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
PIDS+=($!); rpid=$!
wait_port "$rport"
CLUSTER_PIDS=()
start_cluster
db=0
for w in "${WORKLOADS[@]}"; do
    wname=${w%%|*}; wargs=${w#*|}
    {
    echo
    echo "**$wname** (\`loadgen $wargs\`)"
    echo
    echo "| setup | deliveries/s | p99 (ms) | chatroom CPU (s) | chatroom µs/delivery | Redis CPU (s) | Redis µs/delivery | lost |"
    echo "|---|---|---|---|---|---|---|---|"
    } >> "$out"
    for setup in embedded redis cluster; do
        port=$(free_port)
        procs=()
        case $setup in
            embedded) n=1; args=(--data none) ;;
            redis) n=3; db=$((db + 1)); args=(--reuse-port --redis "redis://127.0.0.1:$rport/$db" --data none) ;;
            cluster) n=3
                     # A clean cluster for each workload (the rooms have the same names).
                     for cp in "${CLUSTER_PORTS[@]}"; do redis-cli -p "$cp" flushall >/dev/null; done
                     args=(--reuse-port --redis-cluster "$CLUSTER_SEEDS" --data none) ;;
        esac
        for i in $(seq "$n"); do
            taskset -c 0 "$BIN" --bind "127.0.0.1:$port" "${args[@]}" --rate-limit 0 2>"$TMP/$setup$i.log" &
            PIDS+=($!); procs+=($!)
        done
        wait_port "$port"
        # Every process of the shared port connected (readiness is per process).
        for i in $(seq "$n"); do
            case $setup in
                redis) wait_subscribed "$TMP/$setup$i.log" ;;
                cluster) for _ in $(seq 100); do grep -q "redis cluster: 3 masters" "$TMP/$setup$i.log" && break; sleep 0.1; done ;;
            esac
        done
        ready "$port"
        before=0; for p in "${procs[@]}"; do before=$((before + $(cpu_ticks "$p"))); done
        case $setup in
            embedded) rb=- ;;
            redis) rb=$(cpu_ticks "$rpid") ;;
            cluster) rb=0; for p in "${CLUSTER_PIDS[@]}"; do rb=$((rb + $(cpu_ticks "$p"))); done ;;
        esac
        # shellcheck disable=SC2086
        r=$(taskset -c 1 "$LOADGEN" --url "ws://127.0.0.1:$port" $wargs --json || true)
        echo "$r" >&2
        after=0; for p in "${procs[@]}"; do after=$((after + $(cpu_ticks "$p"))); done
        case $setup in
            embedded) rt=- ;;
            redis) rt=$(( $(cpu_ticks "$rpid") - rb )) ;;
            cluster) ra=0; for p in "${CLUSTER_PIDS[@]}"; do ra=$((ra + $(cpu_ticks "$p"))); done; rt=$((ra - rb)) ;;
        esac
        case $setup in
            embedded) label="1 process, embedded" ;;
            redis) label="3 processes + 1 Redis" ;;
            cluster) label="3 processes + 3-master cluster" ;;
        esac
        row "$label" "$r" "$((after - before))" "$rt" >> "$out"
        for p in "${procs[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
    done
done

fi

# 2. Posts/s through one process (pipelined on the bus), one post per
#    script call against a turn's posts to a room in one call. Its own
#    file; POSTS_ONLY=1 runs this alone, REPEAT=N (default 3) alternates
#    the runs N times, BASELINE_BIN=PATH adds that binary to each round.
if [ -z "${ROOMS_ONLY:-}" ]; then
posts_out=bench/redis-batch.md
REPEAT=${REPEAT:-3}
bins=("$BIN"); [ -n "${BASELINE_BIN:-}" ] && bins+=("$BASELINE_BIN")
[ -n "${rport:-}" ] || {
    rport=$(free_port)
    taskset -c 1 redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
    PIDS+=($!); rpid=$!
    wait_port "$rport"
}
db=10
: > "$TMP/posts.tsv"
for rep in $(seq "$REPEAT"); do
    for bin in "${bins[@]}"; do
        for batch in 1 100; do
            port=$(free_port)
            # A fresh Redis database each run, so the rooms of earlier runs do not mix in.
            redis-cli -p "$rport" -n "$db" flushdb >/dev/null
            taskset -c 0 "$bin" --bind "127.0.0.1:$port" --redis "redis://127.0.0.1:$rport/$db" --redis-batch "$batch" \
                --data none --rate-limit 0 2>"$TMP/pub$batch.log" &
            PIDS+=($!); pid=$!
            db=$(( db % 15 + 1 ))
            wait_port "$port"
            wait_subscribed "$TMP/pub$batch.log"
            c0=$(cpu_ticks "$pid"); r0=$(cpu_ticks "$rpid"); times > "$TMP/times0"
            r=$(taskset -c 1 "$LOADGEN" --url "ws://127.0.0.1:$port" --clients 200 --rooms 200 --senders 200 --messages 3000 --window 32 --json || true)
            times > "$TMP/times1"; c1=$(cpu_ticks "$pid"); r1=$(cpu_ticks "$rpid")
            l0=$(children_us "$TMP/times0"); l1=$(children_us "$TMP/times1")
            echo "$r" >&2
            calls=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^chatroom_redis_posts_total /{p=$2} /^chatroom_redis_post_calls_total /{c=$2} END{if (c>0) printf "%.1f", p/c; else print 0}')
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(basename "$bin")" "$batch" "$(echo "$r" | json_get deliveries_per_sec)" \
                "$(echo "$r" | json_get delivered)" "$((c1 - c0))" "$((r1 - r0))" "$calls" "$((l1 - l0))" >> "$TMP/posts.tsv"
            kill "$pid"; wait "$pid" 2>/dev/null || true
        done
    done
done
# (`-t publish` is not a test name every redis-benchmark knows: name the command.)
rb=$(redis-benchmark -p "$rport" -P 16 -n 200000 -q publish chatroom:bench hello 2>/dev/null | tr '\r' '\n' \
    | python3 -c 'import re,sys; m=re.findall(r"([0-9.]+) requests per second", sys.stdin.read()); print(m[-1] if m else "n/a")')
{
echo "# Posts into Redis, batched and not (measured $(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "Command: \`${POSTS_ONLY:+POSTS_ONLY=1 }REPEAT=$REPEAT ${BASELINE_BIN:+BASELINE_BIN=$BASELINE_BIN }bash scripts/bench_redis.sh\`."
echo "One process (\`--data none --rate-limit 0\`) on core 0; redis-server and loadgen on core 1. 200 rooms with"
echo "one member each, every member posting 3,000 messages with 32 in flight (\`loadgen --clients 200 --rooms 200"
echo "--senders 200 --messages 3000 --window 32\`), received back on the subscription. \`--redis-batch 1\`: each post"
echo "its own EVALSHA; \`--redis-batch 100\` (the default): a turn's posts to a room in one EVALSHA and one PUBLISH."
echo "Medians of $REPEAT runs per binary, alternated, [min–max]; CPU from /proc (utime+stime) over the run, the"
echo "load generator's from the shell's \`times\`. Core 1 carries Redis and the load generator: their sum per post"
echo "against the chatroom's says which core a run was bound by."
echo
python3 - "$TMP/posts.tsv" "$hz" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
hz = int(sys.argv[2])
by = {}
for name, batch, pps, delivered, ct, rt, calls, lt in rows:
    d = max(float(delivered or 0), 1.0)
    by.setdefault((name, batch), []).append((float(pps), int(ct) / hz * 1e6 / d, int(rt) / hz * 1e6 / d, calls, int(lt) / d))
def cell(vals, fmt):
    return f"{fmt(st.median(vals))} [{fmt(min(vals))}–{fmt(max(vals))}]"
print("| binary | batch | posts/s | chatroom µs/post | Redis µs/post | loadgen µs/post | posts per call |")
print("|---|---|---|---|---|---|---|")
for (name, batch), runs in by.items():
    print(f"| {name} | {batch} | {cell([r[0] for r in runs], lambda v: f'{v:,.0f}')} | "
          f"{cell([r[1] for r in runs], lambda v: f'{v:.2f}')} | {cell([r[2] for r in runs], lambda v: f'{v:.2f}')} | "
          f"{cell([r[4] for r in runs], lambda v: f'{v:.2f}')} | {runs[0][3]} |")
print()
print("| binary | posts/s, batch 100 ÷ batch 1 (per round) | median |")
print("|---|---|---|")
for name in dict.fromkeys(n for n, _ in by):
    ones, hundreds = by.get((name, "1"), []), by.get((name, "100"), [])
    ratios = [h[0] / o[0] for o, h in zip(ones, hundreds) if o[0] > 0]
    if ratios:
        print(f"| {name} | {', '.join(f'{r:.2f}' for r in ratios)} | {st.median(ratios):.2f} |")
PY
echo
echo "\`redis-benchmark -P 16 publish\` (bare PUBLISH, no subscriber, same Redis): $rb requests/s."
echo
echo "Loadgen result lines (JSON) are in the script's output."
} > "$posts_out"
cat "$posts_out"
fi

# 3. Busy rooms on A only: what B pays for them. One row per binary.
rooms_on_a() {  # rooms_on_a BINARY LABEL
    local bin=$1 label=$2
    local rport pa pb rpid apid bpid ipid
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
    rpid=$!; PIDS+=($rpid)
    wait_port "$rport"
    pa=$(free_port); pb=$(free_port)
    taskset -c 0 "$bin" --bind "127.0.0.1:$pa" --redis "redis://127.0.0.1:$rport" --data none --rate-limit 0 2>"$TMP/a.log" &
    apid=$!; PIDS+=($apid)
    taskset -c 0 "$bin" --bind "127.0.0.1:$pb" --redis "redis://127.0.0.1:$rport" --data none --rate-limit 0 2>"$TMP/b.log" &
    bpid=$!; PIDS+=($bpid)
    wait_port "$pa"; wait_port "$pb"
    wait_subscribed "$TMP/a.log"; wait_subscribed "$TMP/b.log"
    # B's own members: idle, in rooms idle-0..4, for the whole measurement.
    taskset -c 1 "$LOADGEN" --url "ws://127.0.0.1:$pb" --mode idle --clients 50 --rooms 5 --duration 120 --json \
        >"$TMP/idle.json" 2>&1 &
    ipid=$!; PIDS+=($ipid)
    for _ in $(seq 100); do [ "$(metric "$pb" chatroom_room_members)" = 50 ] && break; sleep 0.1; done
    local a0 b0 r0 t0 a1 b1 r1 t1 b2 b3 r
    a0=$(cpu_ticks "$apid"); b0=$(cpu_ticks "$bpid"); r0=$(cpu_ticks "$rpid"); t0=$(date +%s.%N)
    r=$(taskset -c 1 "$LOADGEN" --url "ws://127.0.0.1:$pa" --clients 200 --rooms 20 --senders 20 --rate 2000 \
        --messages 500 --json || true)
    a1=$(cpu_ticks "$apid"); b1=$(cpu_ticks "$bpid"); r1=$(cpu_ticks "$rpid"); t1=$(date +%s.%N)
    echo "$label: $r" >&2
    local took; took=$(python3 -c "print(round($t1-$t0,2))")
    # B's idle level: as long again, with no traffic anywhere (a measuring
    # window, not a wait for anything).
    b2=$(cpu_ticks "$bpid"); sleep "$took"; b3=$(cpu_ticks "$bpid")
    echo "| $label | $(echo "$r" | json_get deliveries_per_sec) | $(echo "$r" | json_get lost) | $took | $(secs $((a1-a0))) | $(secs $((b1-b0))) | $(secs $((b3-b2))) | $(metric "$pb" chatroom_redis_messages_received_total) | $(secs $((r1-r0))) |" >> "$rooms_out"
    kill "$ipid" "$apid" "$bpid" "$rpid" 2>/dev/null || true
    wait "$ipid" "$apid" "$bpid" "$rpid" 2>/dev/null || true
}

if [ -z "${POSTS_ONLY:-}" ]; then
rooms_out=bench/redis-rooms.md
mkdir -p bench
{
echo "# Busy rooms on one process: what the other pays (measured $(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "Command: \`ROOMS_ONLY=1 ${BASELINE_BIN:+BASELINE_BIN=$BASELINE_BIN }bash scripts/bench_redis.sh\`. A and B on core 0, loadgen on core 1, redis-server unpinned."
echo "Traffic: 200 clients of A in 20 rooms, 20 senders, 2,000 messages/s offered (10,000 in all, 100-byte texts); B serves 50 idle members in 5 rooms of its own."
echo "CPU is utime+stime from /proc, in seconds over the run; B idle is B over as long again with no traffic."
echo
echo "| binary | deliveries/s | lost | run (s) | A CPU (s) | B CPU during run (s) | B CPU idle (s) | messages B heard from Redis | Redis CPU (s) |"
echo "|---|---|---|---|---|---|---|---|---|"
} > "$rooms_out"
if [ -n "${BASELINE_BIN:-}" ]; then rooms_on_a "$BASELINE_BIN" "baseline ($(basename "$BASELINE_BIN"))"; fi
rooms_on_a "$BIN" "this build (per-room channels)"
cat "$rooms_out"
fi
