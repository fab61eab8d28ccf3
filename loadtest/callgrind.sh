#!/usr/bin/env bash
# User-space instructions per delivery of a gateway build, counted by
# valgrind's callgrind (repeatable on a noisy machine, unlike time): a
# gateway under callgrind, 500 subscribers on one topic, events at 10/s
# published one per call; run with 11 and with 111 events, and the
# difference in instructions over the difference in deliveries is the cost
# of a delivery (start-up and connections cancel out). The kernel's share
# is not counted (see perf in docs/benchmarks.md).
#
#   loadtest/callgrind.sh [gateway binary]   # default target/release/herald-gateway
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p herald-gateway -p herald-loadtest
GATEWAY=${1:-target/release/herald-gateway}
SECRET=callgrind-secret-0123456789abcdef
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # $1 = seconds of publishing at 10/s; prints "instructions deliveries"
  local pub adm pid
  pub=$(free_port); adm=$(free_port)
  valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$1" "$GATEWAY" \
    --jwt-hs256-secret "$SECRET" --admin-api-keys k --listen "127.0.0.1:$pub" \
    --admin-listen "127.0.0.1:$adm" --log-level warn 2>/dev/null &
  pid=$!
  for _ in $(seq 1 600); do curl -fs "http://127.0.0.1:$adm/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  target/release/herald-loadtest fanout --quiet --secret "$SECRET" --admin-key k \
    --url "ws://127.0.0.1:$pub/ws" --admin "http://127.0.0.1:$adm" --connections 500 \
    --rate 10 --batch 1 --publishers 1 --payload 60 --duration "$1" --connect-rate 200 \
    --out "$OUT/lt.$1" >/dev/null
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$OUT/cg.$1" "$OUT/lt.$1/report.json" <<'PY'
import json, sys
total = next(int(l.split()[1]) for l in open(sys.argv[1]) if l.startswith("totals:"))
r = json.load(open(sys.argv[2]))
assert r["delivery"]["lost"] == 0, "events were lost"
print(total, r["delivery"]["received"])
PY
}

read -r i1 d1 < <(run 1)
read -r i2 d2 < <(run 11)
echo "instructions per delivery: $(( (i2 - i1) / (d2 - d1) )) ($i1 for $d1 deliveries, $i2 for $d2)"
