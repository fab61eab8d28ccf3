#!/usr/bin/env bash
# Presence under load, on loopback only: MEMBERS sessions (default 10,000)
# subscribe to one presence topic across three gateway nodes on one Redis
# this script starts; reports how long until the admin route counts them
# all, the route's answer time (p50/p99 of READS reads), the Redis memory
# per member, and how long until all have left once the clients close.
# Bounded: every wait has a deadline; everything started is stopped on exit.
#
#   scripts/presence-load.sh                 # release binaries in target/release
#   HERALD_BIN_DIR=target/debug MEMBERS=2000 scripts/presence-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${HERALD_BIN_DIR:-target/release}
MEMBERS=${MEMBERS:-10000}
READS=${READS:-50}
HOLD=${HOLD:-45}
SECRET=presence-load-secret-0123456789
KEY=presence-load-key
TOPIC=lt.0
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }

RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.05; done

URLS=()
ADMINS=()
for n in 1 2 3; do
  P=$(free_port); A=$(free_port)
  "$BIN/herald-gateway" --redis-url "redis://127.0.0.1:$RP" --node-id "n$n" \
    --listen "127.0.0.1:$P" --admin-listen "127.0.0.1:$A" \
    --jwt-hs256-secret "$SECRET" --admin-api-keys "$KEY" \
    --presence-topics 'lt.>' --limits-max-connections 20000 --log-level warn \
    >"$WORK/n$n.log" 2>&1 &
  PIDS+=($!)
  URLS+=("ws://127.0.0.1:$P/ws")
  ADMINS+=("http://127.0.0.1:$A")
done
for a in "${ADMINS[@]}"; do
  for _ in $(seq 200); do curl -sf "$a/readyz" >/dev/null && break; sleep 0.05; done
done
ADMIN=${ADMINS[0]}
count() { curl -sf -H "Authorization: Bearer $KEY" "$ADMIN/v1/topics/$TOPIC/presence" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])'; }
mem() { redis-cli -p "$RP" info memory | awk -F: '/^used_memory:/{print $2}' | tr -d '\r'; }

BEFORE=$(mem)
START=$(now)
"$BIN/herald-loadtest" fanout --quiet --connections "$MEMBERS" --topics 1 --rate 1 \
  --duration "$HOLD" --url "$(IFS=,; echo "${URLS[*]}")" --admin "$ADMIN" \
  --admin-key "$KEY" --secret "$SECRET" >"$WORK/loadtest.log" 2>&1 &
LT=$!
PIDS+=("$LT")
deadline=$(( $(date +%s) + 120 ))
until [ "$(count)" -ge "$MEMBERS" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "only $(count) of $MEMBERS members after 120 s" >&2; exit 1; }
  sleep 0.2
done
JOINED=$(since "$START")
TIMES=$WORK/times
for _ in $(seq "$READS"); do
  curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $KEY" "$ADMIN/v1/topics/$TOPIC/presence" >>"$TIMES"
done
HASH=$(redis-cli -p "$RP" memory usage "herald:{$TOPIC}:p" samples 0)
AFTER=$(mem)
wait "$LT" || true
CLOSED=$(now)
deadline=$(( $(date +%s) + 60 ))
until [ "$(count)" -eq 0 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "$(count) members still present 60 s after the clients closed" >&2; exit 1; }
  sleep 0.2
done
LEFT=$(since "$CLOSED")
python3 - "$TIMES" "$MEMBERS" "$JOINED" "$LEFT" "$HASH" "$BEFORE" "$AFTER" <<'EOF'
import sys
times = sorted(float(t) * 1000 for t in open(sys.argv[1]))
members, joined, left, hash_bytes, before, after = sys.argv[2:8]
members = int(members)
p = lambda q: times[min(len(times) - 1, int(q * len(times)))]
print(f"members: {members} on 3 nodes, one topic")
print(f"all present after: {joined} s (connect + subscribe + join)")
print(f"presence route, {len(times)} reads: p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms")
print(f"member hash: {int(hash_bytes)} bytes = {int(hash_bytes) / members:.0f} B per member")
print(f"redis used_memory growth: {(int(after) - int(before)) / members:.0f} B per member (hash, connections, buffers)")
print(f"all gone after the clients closed: {left} s")
EOF
