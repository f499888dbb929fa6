#!/usr/bin/env bash
# Runs the browser tests: headless Debian Chromium driven by playwright-core,
# against the real chatroom binary (CHATROOM_BIN, default
# ../../target/release/chatroom). Exit code: node --test's.
set -euo pipefail

# Paths given relative to where we were called from stay valid after the cd.
for var in CHATROOM_BIN CHATROOM_WWW; do
    value="${!var:-}"
    if [ -n "$value" ] && [[ "$value" != /* ]]; then
        export "$var=$PWD/$value"
    fi
done

cd "$(dirname "${BASH_SOURCE[0]}")"

# playwright-core never downloads browsers; say so anyway.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --no-audit --no-fund
    touch node_modules
fi

# `bash run.sh chat.test.mjs` runs one file; no arguments runs them all.
if [ "$#" -eq 0 ]; then
    set -- *.test.mjs
fi
exec node --test --test-reporter=spec "$@"
