#!/usr/bin/env bash
# The client tests: the TypeScript SDK (clients/js) installed with `npm ci`
# and built with tsc; its unit tests (fake socket, fake clock); the check that
# herald-gateway embeds the current build; the SDK against real gateway, Redis
# and herald-admin processes from Node; the demo page in headless Chromium, on
# one node and on two nodes behind HAProxy across a kill -9.
#
# Binaries: the Node test runs $HERALD_BIN_DIR (default target/debug); the
# browser tests run this checkout's target/debug (or $HERALD_DEMO_BIN_DIR),
# whose gateway embeds the demo page. HERALD_CLIENT_RUNS=N repeats the Node
# and browser tests N times in a row (flakiness check).
set -euo pipefail
cd "$(dirname "$0")/.."

(cd clients/js && npm ci --no-audit --no-fund --silent && npm run -s build)
[ -d tests/browser/node_modules/playwright-core ] ||
  (cd tests/browser && npm ci --no-audit --no-fund --silent)

(cd clients/js && node --test test/unit/ test/bundle.test.mjs)

runs="${HERALD_CLIENT_RUNS:-1}"
for run in $(seq 1 "$runs"); do
  [ "$runs" = 1 ] || echo "== client tests: run $run of $runs"
  node --test --test-concurrency=1 \
    clients/js/test/integration/gateway.test.mjs \
    tests/browser/demo.test.mjs \
    tests/browser/failover.test.mjs
done
