#!/usr/bin/env bash
# Long random fuzzing of the admin API from its OpenAPI document
# (schemathesis), for people who want it; not part of scripts/test.sh,
# whose run is deterministic (scripts/schemathesis.sh, fixed seed).
#
# Each run prints its seed. A failure found here is reproduced with
#   SEED=<seed> RANDOM_RUN=1 MAX_TIME=<same> scripts/schemathesis.sh
# and then becomes a fixed case: a Rust test of the exact request, or a
# seed in scripts/schemathesis.sh that finds it.
#
#   scripts/fuzz-api.sh              # 10 minutes, a new seed
#   MAX_TIME=3600 SEED=42 scripts/fuzz-api.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-$(python3 -c 'import random; print(random.randrange(1, 2**31))')}
echo "fuzz-api: seed $SEED, ${MAX_TIME:-600} s"
SEED=$SEED RANDOM_RUN=1 MAX_TIME=${MAX_TIME:-600} exec scripts/schemathesis.sh
