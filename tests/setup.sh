#!/usr/bin/env bash
# Installs what `cargo test --workspace` needs on a fresh machine, and
# nothing that is already there:
#   - the wasm32-wasip2 target, for the Rust guests;
#   - redis-server, nats-server and PostgreSQL (the tests start their own
#     servers), and Chromium with its chromedriver (the console's browser
#     test drives them);
#   - the Python and JavaScript guest toolchains, pinned:
#     componentize-py (guest-sdk/python/requirements.txt) in
#     guest-sdk/python/.venv, componentize-js (guest-sdk/js/package-lock.json)
#     in guest-sdk/js/node_modules.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2

if ! { command -v redis-server && command -v nats-server && ls /usr/lib/postgresql/*/bin/initdb \
    && command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq redis-server nats-server postgresql chromium chromium-driver
fi

python=guest-sdk/python
if ! cmp -s "$python/requirements.txt" "$python/.venv/requirements.txt"; then
    rm -rf "$python/.venv"
    python3 -m venv "$python/.venv"
    "$python/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$python/requirements.txt"
    cp "$python/requirements.txt" "$python/.venv/requirements.txt"
fi

js=guest-sdk/js
if ! cmp -s "$js/package-lock.json" "$js/node_modules/.escrow-installed"; then
    npm ci --prefix "$js" --no-audit --no-fund --loglevel=error
    cp "$js/package-lock.json" "$js/node_modules/.escrow-installed"
fi
