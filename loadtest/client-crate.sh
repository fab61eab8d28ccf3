#!/usr/bin/env bash
# The Rust client crate's subscriber against herald-loadtest's own client:
# N subscribers of one topic at RATE events/s for DUR seconds, a fresh
# release gateway for each, two rounds; prints what arrived and the
# receiving process's CPU and peak RSS (/usr/bin/time). Loopback only.
#
#   N=1000 RATE=100 DUR=10 loadtest/client-crate.sh
#   SKIP_BUILD=1 ...      # use the release binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${SKIP_BUILD:-}" ] || {
  cargo build --release -q -p herald-gateway -p herald-loadtest
  cargo build --release -q -p herald-client --example fanout
}
N=${N:-1000}; RATE=${RATE:-100}; DUR=${DUR:-10}
SECRET=bench-secret-0123456789abcdef; KEY=k
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
run_gw() { P=$(free_port); A=$(free_port); target/release/herald-gateway --jwt-hs256-secret $SECRET --admin-api-keys $KEY --listen 127.0.0.1:$P --admin-listen 127.0.0.1:$A --log-level warn & GW=$!; for _ in $(seq 1 100); do curl -fs http://127.0.0.1:$A/readyz >/dev/null 2>&1 && break; sleep 0.1; done; }
ulimit -n 20000
trap 'kill "${GW:-}" 2>/dev/null || true' EXIT
for round in 1 2; do
run_gw
/usr/bin/time -f "crate client: %U user %S sys s, max RSS %M KB" target/release/examples/fanout ws://127.0.0.1:$P/ws http://127.0.0.1:$A $KEY $SECRET $N $RATE $DUR
kill $GW; wait $GW 2>/dev/null || true
run_gw
/usr/bin/time -f "herald-loadtest: %U user %S sys s, max RSS %M KB" target/release/herald-loadtest fanout --secret $SECRET --admin-key $KEY --url ws://127.0.0.1:$P/ws --admin http://127.0.0.1:$A --connections $N --rate $RATE --batch 1 --publishers 1 --payload 60 --duration $DUR --quiet --out /tmp/cb-lt > /dev/null
python3 -c "import json;r=json.load(open('/tmp/cb-lt/report.json'));print('loadtest: received',r['delivery']['received'],'of',r['delivery']['expected'],'lost',r['delivery']['lost'],'%.0f deliveries/s'%r['deliveries_per_second'])"
kill $GW; wait $GW 2>/dev/null || true
done
