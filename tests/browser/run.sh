#!/usr/bin/env bash
# Runs the browser tests: headless Debian Chromium driven by playwright-core,
# against the real chatroom binary (CHATROOM_BIN, default
# ../../target/release/chatroom). Exit code: node --test's.
#
#   bash run.sh [FILE.test.mjs...]          # over http://
#   bash run.sh --tls [FILE.test.mjs...]    # the same tests over https:// and wss://
#
# --tls makes a self-signed ECDSA P-256 certificate for the run (openssl), starts
# every server with --tls-cert/--tls-key, has Chromium trust that key alone
# (--ignore-certificate-errors-spki-list) and Node's fetch trust the certificate
# (NODE_EXTRA_CA_CERTS).
set -euo pipefail

if [ "${1:-}" = --tls ]; then
    shift
    command -v openssl >/dev/null || { echo "run.sh: openssl not found (needed for --tls's certificate)" >&2; exit 1; }
    tls_dir=$(mktemp -d "${TMPDIR:-/tmp}/chatroom-browser-tls.XXXXXX")
    trap 'rm -rf "$tls_dir"' EXIT
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$tls_dir/key.pem" -out "$tls_dir/cert.pem" 2>"$tls_dir/openssl.log" ||
        { cat "$tls_dir/openssl.log" >&2; echo "run.sh: openssl could not make a certificate" >&2; exit 1; }
    export CHATROOM_TLS_CERT="$tls_dir/cert.pem" CHATROOM_TLS_KEY="$tls_dir/key.pem"
    export NODE_EXTRA_CA_CERTS="$tls_dir/cert.pem"
fi

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
node --test --test-reporter=spec "$@"
