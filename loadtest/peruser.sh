#!/usr/bin/env bash
# Per-user topics (issue 27): every connection subscribes to its own topic
# `lt.<i>` and to one shared topic; events go to one user each.
#   1. held: N connections opened at RATE/s, each subscribing, then held
#      HOLD s: RSS per connection (the gateways' sum), connect+subscribe
#      time, and, with Redis, the pub/sub channels Redis holds;
#   2. traffic: the same shape, EVENTS events/s to the users in turn:
#      publish -> deliver p50/p99, lost.
# On NODES gateway nodes (1: memory broker; more: one Redis and
# herald-admin; REDIS_CLUSTER=1: a 3-master Redis Cluster and sharded
# pub/sub, on any NODES). A process holds at most 20,000 files here: one
# node holds at most ~19,000 connections, so N is spread over the nodes.
#
#   NODES=1 N=19000 loadtest/peruser.sh
#   NODES=3 N=57000 loadtest/peruser.sh
#   REDIS_CLUSTER=1 NODES=3 N=57000 loadtest/peruser.sh
#   SKIP_BUILD=1 ...     # use the release binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-1}; N=${N:-19000}; RATE=${RATE:-3000}; HOLD=${HOLD:-20}
EVENTS=${EVENTS:-2000}; DUR=${DUR:-20}
SECRET=bench-secret-0123456789abcdef; KEY=bench-admin-key
OUT=${OUT:-target/peruser}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p herald-gateway -p herald-admin-api -p herald-loadtest
B=target/release
ulimit -n "$(ulimit -Hn)"
rm -rf "$OUT"; mkdir -p "$OUT"
pids=()
trap 'for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A port under 55536 whose cluster bus port (+10000) is free too.
bus_port() { python3 -c '
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p < 55536:
        try: socket.socket().bind(("127.0.0.1", p + 10000)); print(p); break
        except OSError: pass
'; }
wait_http() { for _ in $(seq 1 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }

redis() { # port, extra args...: a redis-server, answering PING
  local port=$1; shift
  mkdir -p "$OUT/redis-$port"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$OUT/redis-$port" "$@" >/dev/null & pids+=("$!")
  for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
# The pub/sub channels Redis holds: sharded ones summed over the masters.
channels() {
  if [ -n "${REDIS_CLUSTER:-}" ]; then
    local n=0 p; for p in $RPORTS; do n=$(( n + $(redis-cli -p "$p" pubsub shardchannels | wc -l) )); done; echo "$n"
  else redis-cli -p "$RPORT" pubsub channels | wc -l; fi
}
start() { # a fresh cluster: sets URLS, ADMIN, PIDS, RPORT (RPORTS)
  URLS=""; PIDS=""; RPORT=""; RPORTS=""; local extra=""
  if [ -n "${REDIS_CLUSTER:-}" ]; then
    local p addrs=""
    for _ in 1 2 3; do
      p=$(bus_port); redis "$p" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000
      RPORTS="$RPORTS $p"; addrs="$addrs 127.0.0.1:$p"; extra="${extra:+$extra,}redis://127.0.0.1:$p"
    done
    # shellcheck disable=SC2086
    timeout 60 redis-cli --cluster create $addrs --cluster-replicas 0 --cluster-yes >/dev/null
    for p in $RPORTS; do
      for _ in $(seq 1 100); do redis-cli -p "$p" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
    done
    RPORT=${RPORTS# }; RPORT=${RPORT%% *}
    extra="--redis-url $extra --redis-cluster"
  elif [ "$NODES" -gt 1 ]; then
    RPORT=$(free_port); redis "$RPORT"
    extra="--redis-url redis://127.0.0.1:$RPORT"
  fi
  for i in $(seq 1 "$NODES"); do
    local p a; p=$(free_port); a=$(free_port)
    # shellcheck disable=SC2086
    $B/herald-gateway --jwt-hs256-secret "$SECRET" --admin-api-keys "$KEY" --listen "127.0.0.1:$p" \
      --admin-listen "127.0.0.1:$a" --log-level warn --node-id "n$i" $extra & pids+=("$!")
    PIDS="${PIDS:+$PIDS,}$!"; URLS="${URLS:+$URLS,}ws://127.0.0.1:$p/ws"; ADMIN=${ADMIN:-http://127.0.0.1:$a}
    wait_http "http://127.0.0.1:$a/readyz"
  done
  if [ -n "$RPORT" ]; then
    local ap; ap=$(free_port)
    # shellcheck disable=SC2086
    $B/herald-admin $extra --admin-api-keys "$KEY" --admin-listen "127.0.0.1:$ap" --log-level warn & pids+=("$!")
    ADMIN=http://127.0.0.1:$ap; wait_http "$ADMIN/readyz"
  fi
}
# Newest first: the gateways and herald-admin before their Redis.
stop_all() {
  for ((k = ${#pids[@]} - 1; k >= 0; k--)); do kill "${pids[k]}" 2>/dev/null || true; wait "${pids[k]}" 2>/dev/null || true; done
  pids=(); ADMIN=""
}
procs=$(( (N + 9499) / 9500 ))

start
if [ -n "$RPORT" ]; then
  ( sleep $(( N / RATE + HOLD / 2 ))
    echo "redis pub/sub channels while held: $(channels)" > "$OUT/redis.txt" ) &
  counter=$!
fi
$B/herald-loadtest connect --secret "$SECRET" --url "$URLS" --connections "$N" --rate "$RATE" --duration "$HOLD" \
  --processes "$procs" --sources 4 --per-user --shared-topic --pid "$PIDS" --quiet --out "$OUT/held" > /dev/null
[ -z "${counter:-}" ] || wait "$counter"
stop_all
start
$B/herald-loadtest fanout --secret "$SECRET" --admin-key "$KEY" --url "$URLS" --admin "$ADMIN" --connections "$N" \
  --per-user --shared-topic --rate "$EVENTS" --batch 10 --publishers 2 --payload 60 --duration "$DUR" \
  --connect-rate "$RATE" --processes "$procs" --sources 4 --pid "$PIDS" --quiet --out "$OUT/traffic" > /dev/null
stop_all
python3 - "$OUT" "$NODES" "$N" <<'PY'
import json, os, sys
out, nodes, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = json.load(open(os.path.join(out, "held", "report.json")))
t = json.load(open(os.path.join(out, "traffic", "report.json")))
hs = sorted(h.get("handshake_pairs") or [])
print(f"nodes {nodes}, connections {n} (held: {h['connections']}, failed {h['connect_errors']})")
print(f"RSS per connection (own topic + shared): {h['per_connection']['rss_bytes']:.0f} B")
print(f"open+subscribe p50 / p99: {h['latency']['p50_us']/1000:.2f} / {h['latency']['p99_us']/1000:.2f} ms, at {h['settings']['rate']}/s")
r = os.path.join(out, "redis.txt")
if os.path.exists(r): print(open(r).read().strip())
d = t["delivery"]
print(f"traffic: {t['published']} events to {t['settings']['topics']} users, received {d['received']} of {d['expected']}, lost {d['lost']}, dup {d['duplicated']}, p50 / p99 {t['latency']['p50_us']/1000:.2f} / {t['latency']['p99_us']/1000:.2f} ms")
PY
