#!/usr/bin/env bash
# End-to-end benchmark: chatroom and the reference peers (../shared/peers) in the same run,
# driven by the project's load generator, the server pinned to core 0 and the load to core 1.
# Writes bench/results.json, bench/results.md and bench/*.svg (scripts/bench_report.py).
#
# Usage: scripts/bench.sh [--quick] [--repeat N] [--servers LIST] [--scenarios LIST]
#                         [--baseline BIN] [--append] [--no-build] [--out DIR] [--keep-raw DIR]
#
#   --servers    comma list of chatroom, chatroom-mem, tokio_ws, node_ws, django, and with
#                --baseline also chatroom-base, chatroom-mem-base
#                [chatroom,chatroom-mem,tokio_ws,node_ws]; `all` adds django
#   --baseline B another chatroom binary B (e.g. a copy of the previous release build) to run
#                alternately with this one in the same invocation: chatroom-base is B started
#                exactly as chatroom (SQLite file in the run's temp dir, --rate-limit 0),
#                chatroom-mem-base is B as chatroom-mem (--data none). Without --servers,
#                chatroom-base is added to the default list (and to `all`); with an explicit
#                --servers list, name chatroom-base / chatroom-mem-base there. results.md then
#                gets an "old vs new" table: medians, min–max over the repeats, new/old ratio,
#                and whether the ranges overlap
#   --scenarios  comma list of a, b, c (= c1,c2), c1, c2, d, e, f, sweep (= sweep10,sweep100,a),
#                a_small, c_small                                          [a,b,c,d,e,f,sweep]
#                django only runs a_small and c_small (it manages a few thousand deliveries/s); when django
#                is among the servers, a_small and c_small are added for every server.
#   --repeat N   runs per (scenario, server); the report shows the median     [3; --quick: 1]
#   --quick      one repeat, shorter runs (a smoke test, not a result)
#   --append     keep the other (scenario, server) results already in bench/results.json
#                (e.g. a separate django run); results of this run replace same-named ones
#   --no-build   use target/release/{chatroom,loadgen} as they are
#   --out DIR    write results.json, results.md and the charts to DIR               [bench/]
#   --keep-raw D keep the raw per-run files (loadgen output, /proc samples) in D
#
# Scenarios (100-byte messages; room runs closed loop, window 1, after 10 warm-up posts/sender):
#   a        1 room x 1,000 clients, 10 senders                 deliveries/s, server CPU/delivery
#   b        100 rooms x 10 clients, 1 sender per room          deliveries/s, server CPU/delivery
#   sweep10  100 rooms x 10 clients, 10 senders in total        (room-size sweep; 1,000 = a)
#   sweep100 10 rooms x 100 clients, 10 senders in total
#   c1       1 room x 100 clients, 10 senders, 200 msgs/s offered (open loop)     latency
#            (runs 15 s, 3,000 messages: a message's 100 deliveries share its fate, so p99 is
#            decided by the worst 1% of the messages; at 5 s, 1,000 messages, one server's p99
#            swung 1.2-2.5 ms from run to run)
#   c2       1 room x 1,000 clients, 10 senders, 100 msgs/s offered (open loop)   latency
#   d        10,000 idle WebSockets over 100 rooms                    server RSS per connection
#   e        churn: 50 concurrent connect/post/await-own-copy/close cycles         cycles/s
#   f        raw echo (/ws/echo), 10 clients closed loop                        round trips/s
#   a_small  1 room x 100 clients, 10 senders (scaled down for django; django posts 30 messages
#            per sender, the others 500, so that every server's CPU figure spans enough ticks)
#   c_small  1 room x 100 clients, 10 senders, 10 msgs/s offered (for django)
#   flood    fairness under a flood (chatroom servers only; writes $OUT/flood.md via
#            scripts/bench_flood.py, not results.*): one loadgen floods room flood-0 with one
#            client (window 50000, reading its own copies) while a second loadgen process runs 10
#            clients in 10 other rooms, each posting 20 msgs/s (open loop, 150 messages each);
#            the quiet rooms' p50/p99/max delivery latency and the server's RSS growth (peak
#            VmRSS minus VmRSS at start, sampled every 0.1 s), next to the same quiet run
#            without the flood
#   flood1000  the same with 1,000 quiet clients in 100 rooms of 10, each posting 20 msgs/s
#            (the default --rate-limit; 100 messages each)
#
# Every server is started fresh for every run (RSS figures need a fresh process), waited for
# with a bounded retry, measured through its own /proc entry (loadgen --server-pid: utime+stime
# of the process that owns the listening socket), and stopped after; nothing is left running.
# Right before a chatroom server (any chatroom* name) is stopped, its /metrics is scraped: the
# report shows messages delivered per flush (chatroom_messages_delivered_total ÷
# chatroom_flushes_total) and chatroom_held_turns_total for the room scenarios; these counters
# cover the whole run (connect, warm-up, measurement), and a binary without a counter shows –.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS_DIR:-$(cd "$ROOT/.." && pwd)/shared/peers}
OUT="$ROOT/bench"
ORIG_ARGS="$*"
QUICK=0
REPEAT=""
SERVERS="chatroom,chatroom-mem,tokio_ws,node_ws"
SCENARIOS="a,b,c,d,e,f,sweep"
APPEND=0
BUILD=1
KEEP_RAW=""
BASELINE=""
SERVERS_GIVEN=0
RUN_LIMIT=240          # seconds: no single loadgen run may take longer than this
READY_LIMIT=300        # tenths of a second to wait for a server to listen (30 s)

die() { echo "bench: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --repeat) REPEAT=${2:?--repeat N}; shift ;;
    --repeat=*) REPEAT=${1#*=} ;;
    --servers) SERVERS=${2:?--servers LIST}; SERVERS_GIVEN=1; shift ;;
    --servers=*) SERVERS=${1#*=}; SERVERS_GIVEN=1 ;;
    --baseline) BASELINE=${2:?--baseline BIN}; shift ;;
    --baseline=*) BASELINE=${1#*=} ;;
    --scenarios) SCENARIOS=${2:?--scenarios LIST}; shift ;;
    --scenarios=*) SCENARIOS=${1#*=} ;;
    --append) APPEND=1 ;;
    --no-build) BUILD=0 ;;
    --out) OUT=${2:?--out DIR}; shift ;;
    --out=*) OUT=${1#*=} ;;
    --keep-raw) KEEP_RAW=${2:?--keep-raw DIR}; shift ;;
    --keep-raw=*) KEEP_RAW=${1#*=} ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (--help)" ;;
  esac
  shift
done
[ -n "$REPEAT" ] || { [ "$QUICK" = 1 ] && REPEAT=1 || REPEAT=3; }
[[ "$REPEAT" =~ ^[1-9][0-9]?$ ]] || die "--repeat takes 1..99"
[ "$SERVERS" = all ] && { SERVERS="chatroom,chatroom-mem,tokio_ws,node_ws,django"; SERVERS_GIVEN=0; }
if [ -n "$BASELINE" ]; then
  [ -f "$BASELINE" ] && [ -x "$BASELINE" ] || die "--baseline $BASELINE: not an executable file"
  BASELINE=$(cd "$(dirname "$BASELINE")" && pwd)/$(basename "$BASELINE")
  # the default list (or `all`) gets chatroom-base right after chatroom, so that the rotation
  # of the server order alternates the two
  [ "$SERVERS_GIVEN" = 0 ] && SERVERS=${SERVERS/#chatroom,/chatroom,chatroom-base,}
fi

# --- expand and check the lists ---------------------------------------------------------------
IFS=, read -r -a server_list <<<"$SERVERS"
for s in "${server_list[@]}"; do
  case "$s" in
    chatroom|chatroom-mem|tokio_ws|node_ws|django) ;;
    chatroom-base|chatroom-mem-base) [ -n "$BASELINE" ] || die "server $s needs --baseline BIN" ;;
    *) die "unknown server $s" ;;
  esac
done
if [ -n "$BASELINE" ] && [[ ",$SERVERS," != *,chatroom-base,* ]] && [[ ",$SERVERS," != *,chatroom-mem-base,* ]]; then
  echo "bench: warning: --baseline given but neither chatroom-base nor chatroom-mem-base is in --servers" >&2
fi
has_django=0; for s in "${server_list[@]}"; do [ "$s" = django ] && has_django=1; done
scen_list=()
add_scen() { local x; for x in "${scen_list[@]}"; do [ "$x" = "$1" ] && return; done; scen_list+=("$1"); }
IFS=, read -r -a wanted <<<"$SCENARIOS"
for s in "${wanted[@]}"; do
  case "$s" in
    c) add_scen c1; add_scen c2 ;;
    sweep) add_scen sweep10; add_scen sweep100; add_scen a ;;
    a|b|c1|c2|d|e|f|sweep10|sweep100|a_small|c_small|flood|flood1000) add_scen "$s" ;;
    *) die "unknown scenario $s" ;;
  esac
done
if [ "$has_django" = 1 ]; then add_scen a_small; add_scen c_small; fi

# loadgen arguments of a scenario (besides --url, --server-pid, --json)
scenario_args() {
  local q=$QUICK server=${2:-}
  case "$1" in
    a)        echo "--mode room --clients 1000 --rooms 1 --senders 10 --messages $([ $q = 1 ] && echo 30 || echo 200) --warmup 10" ;;
    b)        echo "--mode room --clients 1000 --rooms 100 --senders 100 --messages $([ $q = 1 ] && echo 40 || echo 300) --warmup 10" ;;
    sweep10)  echo "--mode room --clients 1000 --rooms 100 --senders 10 --messages $([ $q = 1 ] && echo 200 || echo 1000) --warmup 10" ;;
    sweep100) echo "--mode room --clients 1000 --rooms 10 --senders 10 --messages $([ $q = 1 ] && echo 60 || echo 200) --warmup 10" ;;
    c1)       echo "--mode room --clients 100 --rooms 1 --senders 10 --rate 200 --messages $([ $q = 1 ] && echo 40 || echo 300) --warmup 10" ;;
    c2)       echo "--mode room --clients 1000 --rooms 1 --senders 10 --rate 100 --messages $([ $q = 1 ] && echo 20 || echo 50) --warmup 10" ;;
    d)        echo "--mode idle --clients 10000 --rooms 100 --duration 2 --timeout 120" ;;
    e)        echo "--mode churn --clients 50 --duration $([ $q = 1 ] && echo 2 || echo 5)" ;;
    f)        echo "--mode echo --clients 10 --size 100 --duration $([ $q = 1 ] && echo 2 || echo 5)" ;;
    a_small)  # django: few messages (~4k deliveries/s); the others: enough for >= 0.3 s of server CPU
              if [ "$server" = django ]; then echo "--mode room --clients 100 --rooms 1 --senders 10 --messages $([ $q = 1 ] && echo 10 || echo 30) --warmup 5 --timeout 120"
              else echo "--mode room --clients 100 --rooms 1 --senders 10 --messages $([ $q = 1 ] && echo 100 || echo 500) --warmup 5 --timeout 120"; fi ;;
    c_small)  echo "--mode room --clients 100 --rooms 1 --senders 10 --rate 10 --messages $([ $q = 1 ] && echo 4 || echo 10) --warmup 5 --timeout 120" ;;
  esac
}
# django can only carry the scaled-down scenarios
runs_on() { [ "$1" != django ] || [ "$2" = a_small ] || [ "$2" = c_small ]; }

# --- binaries: build, then copy so that concurrent rebuilds cannot swap them mid-run ---------
if [ "$BUILD" = 1 ]; then
  echo "bench: cargo build --release --bins" >&2
  if (cd "$ROOT" && cargo build --release --bins 2>&1 | tail -n 3) >&2; then BUILD_STATE=built
  else BUILD_STATE="build failed, existing binaries used"; echo "bench: warning: $BUILD_STATE" >&2; fi
else
  BUILD_STATE="not rebuilt (--no-build)"
fi
for b in chatroom loadgen; do [ -x "$ROOT/target/release/$b" ] || die "target/release/$b missing (cargo build --release --bins)"; done
TMP=$(mktemp -d /tmp/chatroom-bench.XXXXXX)
RAW="$TMP/raw"; mkdir -p "$RAW" "$TMP/bin" "$TMP/data"
cp "$ROOT/target/release/chatroom" "$ROOT/target/release/loadgen" "$TMP/bin/"
CHATROOM="$TMP/bin/chatroom"; LOADGEN="$TMP/bin/loadgen"
CHATROOM_BASE=""
if [ -n "$BASELINE" ]; then
  cp "$BASELINE" "$TMP/bin/chatroom-base" || die "cannot copy $BASELINE"
  CHATROOM_BASE="$TMP/bin/chatroom-base"
fi
for s in "${server_list[@]}"; do
  case "$s" in
    tokio_ws) [ -x "${PEERS_HOME:-/tmp/chatroom-peers}/tokio_ws/target/release/tokio_ws_peer" ] || bash "$PEERS/tokio_ws/setup.sh" >&2 || die "tokio_ws setup failed" ;;
    node_ws) [ -d "${PEERS_HOME:-/tmp/chatroom-peers}/node_ws/node_modules/ws" ] || bash "$PEERS/node_ws/setup.sh" >&2 || die "node_ws setup failed" ;;
    django) [ -x "${PEERS_HOME:-/tmp/chatroom-peers}/django_channels/.venv/bin/daphne" ] || LOCKED=1 bash "$PEERS/django_channels/setup.sh" >&2 || die "django setup failed" ;;
  esac
done

# --- server lifecycle ---------------------------------------------------------------------------
SRV_GROUP=""   # process group (= PID of setsid'd launcher) of the running server
LG_PID=""; SAMPLER_PID=""
stop_server() {
  [ -n "$SRV_GROUP" ] || return 0
  kill -TERM -- "-$SRV_GROUP" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 -- "-$SRV_GROUP" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$SRV_GROUP" 2>/dev/null
  wait "$SRV_GROUP" 2>/dev/null
  SRV_GROUP=""
}
cleanup() {
  [ -n "$LG_PID" ] && kill -KILL "$LG_PID" 2>/dev/null
  [ -n "${FL_PID:-}" ] && kill -KILL "$FL_PID" 2>/dev/null
  [ -n "$SAMPLER_PID" ] && kill -KILL "$SAMPLER_PID" 2>/dev/null
  stop_server
  if [ -n "$KEEP_RAW" ] && [ -d "$RAW" ]; then mkdir -p "$KEEP_RAW" && cp -r "$RAW"/. "$KEEP_RAW"/; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT TERM

listener_pid() {  # PID owning the listening socket on port $1
  ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2
}
port_busy() { [ -n "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]; }
NEXT_PORT=18100
pick_port() {

  for _ in $(seq 1 200); do
    NEXT_PORT=$(( NEXT_PORT >= 18999 ? 18100 : NEXT_PORT + 1 ))
    port_busy "$NEXT_PORT" || { echo "$NEXT_PORT"; return 0; }
  done
  return 1
}

# start_server NAME PORT LOG: sets SRV_GROUP and SRV_PID (the listening process), or fails
start_server() {
  local name=$1 port=$2 log=$3 cmd
  case "$name" in
    chatroom)     cmd=("$CHATROOM" --bind "127.0.0.1:$port" --rate-limit 0 --data "$TMP/data/c-$port-$RANDOM.db") ;;
    chatroom-mem) cmd=("$CHATROOM" --bind "127.0.0.1:$port" --rate-limit 0 --data none) ;;
    chatroom-base) cmd=("$CHATROOM_BASE" --bind "127.0.0.1:$port" --rate-limit 0 --data "$TMP/data/b-$port-$RANDOM.db") ;;
    chatroom-mem-base) cmd=("$CHATROOM_BASE" --bind "127.0.0.1:$port" --rate-limit 0 --data none) ;;
    tokio_ws)     cmd=(bash "$PEERS/tokio_ws/run.sh" "$port") ;;
    node_ws)      cmd=(bash "$PEERS/node_ws/run.sh" "$port") ;;
    django)       cmd=(env CHANNEL_CAPACITY=100000 bash "$PEERS/django_channels/run.sh" "$port") ;;
  esac
  # setsid: the server and anything it spawns (django: daphne + redis-server) form one process
  # group that stop_server ends by its ID. taskset: everything in it runs on core 0.
  (cd "$TMP" && exec setsid taskset -c 0 "${cmd[@]}") >"$log" 2>&1 </dev/null &
  SRV_GROUP=$!
  SRV_PID=""
  for _ in $(seq 1 "$READY_LIMIT"); do
    SRV_PID=$(listener_pid "$port")
    [ -n "$SRV_PID" ] && break
    kill -0 "$SRV_GROUP" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$SRV_PID" ]; then
    echo "bench: $name did not listen on $port; log:" >&2; tail -n 5 "$log" >&2
    stop_server; return 1
  fi
  # let a multi-process server finish starting (django: workers, redis connections)
  [ "$name" = django ] && sleep 1
  return 0
}

# scrape_metrics PORT FILE: the server's Prometheus text (bounded; a failure leaves no file)
scrape_metrics() {
  if command -v curl >/dev/null 2>&1; then
    curl -sf --max-time 5 "http://127.0.0.1:$1/metrics" -o "$2" || rm -f "$2"
  else
    python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
      "http://127.0.0.1:$1/metrics" >"$2" 2>/dev/null || rm -f "$2"
  fi
}

# /proc sampler: every 0.1 s, the clock, cores 0 and 1 from /proc/stat, loadgen's stat and
# each server process's stat (one line, fields separated by '|'); bash builtins only.
sampler() {
  local lp=$1 limit=$2 out=$3; shift 3
  local t0=$EPOCHREALTIME cores line p lg ps
  while kill -0 "$lp" 2>/dev/null; do
    mapfile -t -n 3 cores </proc/stat
    lg=""; read -r lg <"/proc/$lp/stat" 2>/dev/null
    line="$EPOCHREALTIME|${cores[1]}|${cores[2]}|$lg"
    for p in "$@"; do ps=""; read -r ps <"/proc/$p/stat" 2>/dev/null; line+="|$ps"; done
    echo "$line" >>"$out"
    if (( ${EPOCHREALTIME%.*} - ${t0%.*} > limit )); then
      echo "bench: loadgen over ${limit}s, killed" >&2; kill -KILL "$lp" 2>/dev/null; break
    fi
    sleep 0.1
  done
}

# --- machine description ------------------------------------------------------------------------
START_EPOCH=$(date +%s)
{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc=$(nproc)"
  echo "kernel=$(uname -r)"
  echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "mem_total_kib=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
  echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "git_rev=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)"
  echo "git_dirty_files=$(cd "$ROOT" && git status --porcelain 2>/dev/null | grep -vc '^?? bench/')"
  echo "build=$BUILD_STATE"
  echo "chatroom_sha256=$(sha256sum "$CHATROOM" | cut -c1-16)"
  if [ -n "$CHATROOM_BASE" ]; then
    echo "baseline=$BASELINE"
    echo "chatroom_base_sha256=$(sha256sum "$CHATROOM_BASE" | cut -c1-16)"
  fi
  echo "node_version=$(node --version 2>/dev/null)"
  echo "fd_limit=$(ulimit -n)"
  echo "quick=$QUICK"
  echo "repeat=$REPEAT"
  echo "servers=$(IFS=,; echo "${server_list[*]}")"
  echo "scenarios=$(IFS=,; echo "${scen_list[*]}")"
  echo "command=scripts/bench.sh $ORIG_ARGS"
} >"$RAW/invocation.env"

# --- flood: fairness and memory under one flooding client (its own loop and report) ----------
# quiet_args SCEN: the quiet load generator's arguments
quiet_args() {
  case "$1" in
    flood)     echo "--mode room --clients 10 --rooms 10 --senders 10 --rate 200 --messages $([ $QUICK = 1 ] && echo 40 || echo 150) --warmup 5 --room-prefix quiet --timeout 120" ;;
    flood1000) echo "--mode room --clients 1000 --rooms 100 --senders 1000 --rate 20000 --messages $([ $QUICK = 1 ] && echo 20 || echo 100) --warmup 2 --room-prefix quiet --timeout 120" ;;
  esac
}
FLOOD_ARGS="--mode room --clients 1 --rooms 1 --senders 1 --window 50000 --messages 100000000 --room-prefix flood --timeout 600"
flood_scens=(); rest_scens=()
for x in "${scen_list[@]}"; do case "$x" in flood|flood1000) flood_scens+=("$x") ;; *) rest_scens+=("$x") ;; esac; done
if [ ${#flood_scens[@]} -gt 0 ]; then
  flood_servers=(); for s in "${server_list[@]}"; do case "$s" in chatroom*) flood_servers+=("$s") ;; esac; done
  [ ${#flood_servers[@]} -gt 0 ] || die "flood runs on chatroom servers only"
  FL_PID=""
  for rep in $(seq 1 "$REPEAT"); do
    for scen in "${flood_scens[@]}"; do
      for with in flood none; do
        for k in $(seq 0 $((${#flood_servers[@]} - 1))); do
          server=${flood_servers[$(( (k + rep - 1) % ${#flood_servers[@]} ))]}
          dir="$RAW/flood-$scen-$server-$with-$rep"; mkdir -p "$dir"
          port=$(pick_port) || die "no free port"
          printf 'bench: %-9s %-17s %-5s rep %d ... ' "$scen" "$server" "$with" "$rep" >&2
          start_server "$server" "$port" "$dir/server.log" || { echo "server failed to start" >&2; continue; }
          rss0=$(awk '/VmRSS/ {print $2}' "/proc/$SRV_PID/status")
          if [ "$with" = flood ]; then
            # shellcheck disable=SC2086
            # not niced: a flooder that cannot read its own copies is dropped as a slow
            # consumer, and the flood ends early (flood alive in the report says if it did)
            taskset -c 1 "$LOADGEN" --url "ws://127.0.0.1:$port" $FLOOD_ARGS --json >"$dir/flood.json" 2>"$dir/flood.err" &
            FL_PID=$!
            sleep 1   # the flood is under way before the quiet rooms start
          fi
          # shellcheck disable=SC2086
          taskset -c 1 "$LOADGEN" --url "ws://127.0.0.1:$port" $(quiet_args "$scen") --server-pid "$SRV_PID" --json \
            >"$dir/quiet.json" 2>"$dir/quiet.err" &
          LG_PID=$!
          peak=$rss0; t0=$EPOCHREALTIME
          while kill -0 "$LG_PID" 2>/dev/null; do
            r=$(awk '/VmRSS/ {print $2}' "/proc/$SRV_PID/status" 2>/dev/null); [ -n "$r" ] && [ "$r" -gt "$peak" ] && peak=$r
            (( ${EPOCHREALTIME%.*} - ${t0%.*} > RUN_LIMIT )) && { kill -KILL "$LG_PID"; break; }
            sleep 0.1
          done
          wait "$LG_PID"; rc=$?; LG_PID=""
          flood_alive=0
          if [ -n "$FL_PID" ]; then kill -0 "$FL_PID" 2>/dev/null && flood_alive=1; kill -KILL "$FL_PID" 2>/dev/null; wait "$FL_PID" 2>/dev/null; FL_PID=""; fi
          t1=$EPOCHREALTIME
          scrape_metrics "$port" "$dir/metrics.txt"
          stop_server
          { echo "scenario=$scen"; echo "server=$server"; echo "with=$with"; echo "repeat=$rep"; echo "rc=$rc"
            echo "rss0_kib=$rss0"; echo "rss_peak_kib=$peak"; echo "flood_alive_at_end=$flood_alive"
            echo "seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')"; } >"$dir/meta.env"
          python3 "$ROOT/scripts/bench_flood.py" line "$dir" >&2
        done
      done
    done
  done
  mkdir -p "$OUT"
  python3 "$ROOT/scripts/bench_flood.py" report "$RAW" "$OUT/flood.md" "scripts/bench.sh $ORIG_ARGS" || die "flood report failed"
  scen_list=("${rest_scens[@]}")
  [ ${#scen_list[@]} -gt 0 ] || { echo "bench: flood done; see $OUT/flood.md" >&2; exit 0; }
fi

total=0
for scen in "${scen_list[@]}"; do for s in "${server_list[@]}"; do runs_on "$s" "$scen" && total=$((total + 1)); done; done
total=$((total * REPEAT))
echo "bench: $total runs: scenarios ${scen_list[*]}; servers ${server_list[*]}; $REPEAT repeat(s)" >&2

# --- the runs -----------------------------------------------------------------------------------
# Repeats outermost, so a noisy minute on this shared machine hits one repeat of everything
# rather than every repeat of one server; within a repeat the server order rotates.
n=0
nserv=${#server_list[@]}
for rep in $(seq 1 "$REPEAT"); do
  for scen in "${scen_list[@]}"; do
    for k in $(seq 0 $((nserv - 1))); do
      server=${server_list[$(( (k + rep - 1) % nserv ))]}
      runs_on "$server" "$scen" || continue
      n=$((n + 1))
      dir=$(printf '%s/%03d-%s-%s-%d' "$RAW" "$n" "$scen" "$server" "$rep"); mkdir -p "$dir"
      port=$(pick_port) || die "no free port"
      args=$(scenario_args "$scen" "$server")
      printf 'bench: [%d/%d] %-8s %-17s rep %d ... ' "$n" "$total" "$scen" "$server" "$rep" >&2
      t_launch=$EPOCHREALTIME
      if ! start_server "$server" "$port" "$dir/server.log"; then
        { echo "scenario=$scen"; echo "server=$server"; echo "repeat=$rep"; echo "start_failed=1"; } >"$dir/meta.env"
        echo "server failed to start" >&2
        continue
      fi
      t_ready=$EPOCHREALTIME
      # every process of the server's group (django: daphne, redis-server, the run.sh shell)
      group_pids=$(ps -o pid= -g "$SRV_GROUP" 2>/dev/null | tr -s ' \n' ' ')
      rss_ready=$(awk '/VmRSS/ {print $2}' "/proc/$SRV_PID/status" 2>/dev/null)
      load_before=$(cut -d' ' -f1-3 /proc/loadavg)
      # shellcheck disable=SC2086
      taskset -c 1 "$LOADGEN" --url "ws://127.0.0.1:$port" $args --server-pid "$SRV_PID" --json \
        >"$dir/loadgen.json" 2>"$dir/loadgen.err" &
      LG_PID=$!
      # shellcheck disable=SC2086
      sampler "$LG_PID" "$RUN_LIMIT" "$dir/samples.txt" $group_pids &
      SAMPLER_PID=$!
      taskset -cp 1 "$SAMPLER_PID" >/dev/null 2>&1
      t_lg_start=$EPOCHREALTIME
      wait "$LG_PID"; rc=$?
      t_lg_end=$EPOCHREALTIME
      LG_PID=""
      wait "$SAMPLER_PID" 2>/dev/null; SAMPLER_PID=""
      alive=1; kill -0 "$SRV_PID" 2>/dev/null || alive=0
      # chatroom's own counters (batching: deliveries per flush, held turns), after the load
      # and outside loadgen's measurement window
      case "$server" in chatroom*) [ "$alive" = 1 ] && scrape_metrics "$port" "$dir/metrics.txt" ;; esac
      stop_server
      {
        echo "scenario=$scen"; echo "server=$server"; echo "repeat=$rep"; echo "port=$port"
        echo "server_pid=$SRV_PID"; echo "group_pids=$group_pids"; echo "rss_ready_kib=$rss_ready"
        echo "loadavg_before=$load_before"; echo "loadgen_args=$args"; echo "loadgen_rc=$rc"
        echo "t_launch=$t_launch"; echo "t_ready=$t_ready"; echo "t_lg_start=$t_lg_start"; echo "t_lg_end=$t_lg_end"
        echo "server_alive_after=$alive"
      } >"$dir/meta.env"
      summary=$(python3 - "$dir/loadgen.json" "$dir/metrics.txt" <<'EOF'
import json, sys
try:
    j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
except Exception:
    print("no output"); sys.exit()
keys = ["deliveries_per_sec", "round_trips_per_sec", "cycles_per_sec", "rss_per_conn_bytes",
        "server_cpu_us_per_delivery", "server_cpu_us_per_round_trip", "server_cpu_us_per_cycle", "p50_us", "p99_us"]
m = {}
try:
    for line in open(sys.argv[2]):
        p = line.split()
        if len(p) == 2 and not line.startswith("#"):
            m[p[0]] = float(p[1])
except (OSError, ValueError):
    pass
extra = ""
if m.get("chatroom_flushes_total") and m.get("chatroom_messages_delivered_total"):
    extra += f" msgs_per_flush={m.get('chatroom_messages_delivered_total', 0) / m['chatroom_flushes_total']:.2f}"
if m.get("chatroom_messages_delivered_total") and "chatroom_held_turns_total" in m:
    extra += f" held_turns={m['chatroom_held_turns_total']:.0f}"
print(("ok " if j.get("ok") else "FAIL ") + " ".join(f"{k}={j[k]}" for k in keys if j.get(k) is not None) + extra + (" " + "; ".join(j.get("failures", [])) if not j.get("ok") else "") + (" " + j["error"] if "error" in j else ""))
EOF
)
      echo "$(awk -v a="$t_lg_start" -v b="$t_lg_end" 'BEGIN{printf "%.1fs", b-a}') $summary" >&2
    done
  done
done

END_EPOCH=$(date +%s)
echo "elapsed_s=$((END_EPOCH - START_EPOCH))" >>"$RAW/invocation.env"
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RAW/invocation.env"
mkdir -p "$OUT"
append_flag=(); [ "$APPEND" = 1 ] && append_flag=(--append)
python3 "$ROOT/scripts/bench_report.py" "$RAW" "$OUT" "${append_flag[@]}" || die "report failed"
echo "bench: done in $((END_EPOCH - START_EPOCH)) s; see $OUT/results.md" >&2
