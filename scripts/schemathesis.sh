#!/usr/bin/env bash
# The OpenAPI document checked against the server by a fuzzer we did not
# write (contract §8): schemathesis, every check, every phase, against a
# gateway started here on loopback (memory broker, presence on chat.>), with
# a valid admin key. Exits non-zero on any mismatch.
#
# Deterministic: a fixed seed, a fixed number of examples per operation and
# no example database (implied by --generation-deterministic), so the
# README's test command passes or fails the
# same way on every run. Long random runs are scripts/fuzz-api.sh; what
# they find becomes a fixed case here or in the Rust tests.
#
#   scripts/schemathesis.sh                       # the suite's run
#   SEED=7 MAX_EXAMPLES=500 scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${HERALD_BIN_DIR:-target/debug}
SEED=${SEED:-20261207}
MAX_EXAMPLES=${MAX_EXAMPLES:-300}
# Random runs (scripts/fuzz-api.sh) pass RANDOM_RUN=1 with a time budget.
if [ "${RANDOM_RUN:-0}" = 1 ]; then
  BUDGET=(--max-time "${MAX_TIME:-600}" --seed "$SEED")
else
  BUDGET=(--max-examples "$MAX_EXAMPLES" --seed "$SEED" --generation-deterministic)
fi
KEY=schemathesis-admin-key
WORK=$(mktemp -d)
cleanup() {
  [ -n "${GW:-}" ] && kill "$GW" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PUBLIC=$(free_port)
ADMIN=$(free_port)
"$BIN/herald-gateway" --listen "127.0.0.1:$PUBLIC" --admin-listen "127.0.0.1:$ADMIN" \
  --jwt-hs256-secret schemathesis-secret-0123456789 --admin-api-keys "$KEY" \
  --presence-topics 'chat.>' --log-level warn >"$WORK/gateway.log" 2>&1 &
GW=$!
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.05; done

# pip may put `st` where PATH does not look.
ST=$(command -v st || echo "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/st")
cd "$WORK"
# One worker: CPython 3.11's ast module keeps its recursion depth per
# interpreter, not per thread, so hypothesis describing a strategy in two
# threads at once can raise "SystemError: AST constructor recursion depth
# mismatch" (cpython gh-106905) -- a tool error that failed a CI run.
"$ST" run "http://127.0.0.1:$ADMIN/v1/openapi.json" -H "Authorization: Bearer $KEY" \
  --checks all --phases examples,coverage,fuzzing,stateful "${BUDGET[@]}" \
  --workers 1 --no-color
