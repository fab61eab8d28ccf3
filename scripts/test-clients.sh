#!/usr/bin/env bash
# The client tests: the TypeScript SDK (clients/js) installed with `npm ci`
# and built (tsc + esbuild); its unit tests (fake socket, fake clock); the
# checks of its bundles, among them that herald-gateway embeds the current
# build (gateway/src/assets/herald.js and msgpack.js); the package as `npm
# pack` ships it, used through import and require; the SDK against real
# gateway, Redis and herald-admin processes from Node (protocol 2 in JSON and
# MessagePack); in headless Chromium, the demo page on one node and on two
# nodes behind HAProxy across a kill -9, and the SDK's <script> bundle
# recovering a quiet topic across a kill -9; and Centrifugo's own JavaScript
# SDK (npm `centrifuge`, tests/compat) against /connection/websocket, in JSON
# and Protobuf, across a kill -9 behind HAProxy.
#
# Binaries: the Node tests and the SDK browser test run $HERALD_BIN_DIR
# (default target/debug); the demo-page browser tests run this checkout's
# target/debug (or $HERALD_DEMO_BIN_DIR), whose gateway embeds the demo page.
# HERALD_CLIENT_RUNS=N repeats the Node and browser tests N times in a row
# (flakiness check).
set -euo pipefail
cd "$(dirname "$0")/.."

(cd clients/js && npm ci --no-audit --no-fund --silent && npm run -s build)
[ -d tests/browser/node_modules/playwright-core ] ||
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
[ -d tests/compat/node_modules/centrifuge ] ||
  (cd tests/compat && npm ci --no-audit --no-fund --silent)

(cd clients/js && node --test test/unit/ test/bundle.test.mjs test/package.test.mjs)

runs="${HERALD_CLIENT_RUNS:-1}"
for run in $(seq 1 "$runs"); do
  [ "$runs" = 1 ] || echo "== client tests: run $run of $runs"
  node --test --test-concurrency=1 \
    clients/js/test/integration/gateway.test.mjs \
    clients/js/test/integration/protocol2.test.mjs \
    tests/browser/demo.test.mjs \
    tests/browser/failover.test.mjs \
    tests/browser/sdk.test.mjs \
    tests/compat/centrifuge.test.mjs
done
