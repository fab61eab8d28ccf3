#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each) and
# records the outcome in fuzz/RESULTS.md. Needs cargo-fuzz
# (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets
# it use the sanitizer flags it needs.
#   scripts/fuzz.sh [seconds-per-target]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
{
  echo "# Fuzzing results"
  echo
  echo "Last run: $(date -u +%Y-%m-%dT%H:%MZ), ${secs} s per target, $(nproc) cores, \`scripts/fuzz.sh ${secs}\`."
  echo
  echo "| target | runs | corpus | outcome |"
  echo "|---|---|---|---|"
} > RESULTS.md.new
status=0
for t in $targets; do
  log=$(mktemp)
  if cargo fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1; then
    outcome="no crash"
  else
    outcome="**crash** (see fuzz/artifacts/$t)"
    status=1
  fi
  runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' | tail -1 || true)
  corpus=$(grep -Eo 'corp: [0-9]+/[0-9a-zA-Z]+' "$log" | tail -1 | sed 's/corp: //' || true)
  echo "| $t | ${runs:-?} | ${corpus:-?} | $outcome |" >> RESULTS.md.new
  tail -3 "$log"
  rm -f "$log"
done
mv RESULTS.md.new RESULTS.md
cat RESULTS.md
exit $status
