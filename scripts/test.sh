#!/usr/bin/env bash
# Runs every test chatroom has, on a fresh Debian machine: installs what the
# tests need when it is missing, then runs each suite and prints one summary.
#
#   scripts/test.sh            # everything (CI runs exactly this via .ci/run)
#
# Suites, in order (each must pass):
#   unit + integration   cargo test (real sockets on 127.0.0.1:0)
#   benches (test mode)  cargo test --benches: every bench runs once, untimed
#   lint                 cargo fmt --check, cargo clippy -D warnings
#   conformance          scripts/autobahn.sh (Autobahn fuzzingclient vs /ws/echo)
#   conformance over TLS scripts/autobahn.sh --tls (over wss://: 9.* too, not 12.*/13.*)
#   browser              tests/browser (headless Chromium via playwright-core)
#   browser over TLS     tests/browser/run.sh --tls (the same pages over https://)
#   soak                 scripts/soak.sh 60: a mixed load on the release binary with SQLite;
#                        fails on a lost or duplicated message or leaked descriptors
#   fuzz                 scripts/fuzz.sh 60: each fuzz target for 60 s on its corpus
set -euo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
failures=()
times=()
step() {
    local name=$1
    shift
    echo
    echo "=== $name: $*"
    local start=$SECONDS
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$name")
    fi
    times+=("$name $((SECONDS - start)) s")
    echo "=== $name took $((SECONDS - start)) s"
}

bash scripts/install-deps.sh

export CARGO_TERM_COLOR=never
step build cargo build --release --locked
step tests cargo test --locked
step benches cargo test --locked --benches
step fmt cargo fmt --check
step clippy cargo clippy --locked --all-targets -- -D warnings
step autobahn env CHATROOM_BIN=target/release/chatroom bash scripts/autobahn.sh
step autobahn-tls env CHATROOM_BIN=target/release/chatroom bash scripts/autobahn.sh --tls
step browser env CHATROOM_BIN=target/release/chatroom bash tests/browser/run.sh
step browser-tls env CHATROOM_BIN=target/release/chatroom bash tests/browser/run.sh --tls
step soak env CHATROOM_BIN=target/release/chatroom bash scripts/soak.sh 60
step fuzz bash scripts/fuzz.sh 60

echo
echo "suite times: ${times[*]/%/;} total ${SECONDS} s"
if [ "$failed" -gt 0 ]; then
    echo "failed suites: ${failures[*]}"
fi
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
