#!/usr/bin/env bash
# How many webhooks one node sends per second (docs/hooks.md#sizing): one
# gateway on Redis, the Node receiver of docs/examples (its output thrown
# away), and a reconnect storm (`herald-loadtest churn`) whose sessions each
# produce session.connected and session.disconnected. Samples
# herald_webhooks_total{result="ok"} and herald_webhook_queue every second
# while the storm runs and until the queue is empty; prints the sustained
# rate and the peak queue.
#
#   loadtest/webhooks.sh                 # 1,500 sessions/s for 20 s
#   RATE=3000 DUR=10 loadtest/webhooks.sh
#   SKIP_BUILD=1 loadtest/webhooks.sh    # use the release binaries built
#
# Needs: cargo, redis-server, node. Loopback only; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."

SECRET=bench-secret-0123456789abcdef
HOOK_SECRET=bench-webhook-secret-0123
RATE=${RATE:-1500}
DUR=${DUR:-20}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p herald-gateway -p herald-loadtest
BIN=target/release

pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_tcp() { for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on $1" >&2; return 1; }

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no > /dev/null & pids+=($!)
wait_tcp "$RPORT"
HPORT=$(free_port)
PORT=$HPORT WEBHOOK_SECRET=$HOOK_SECRET node docs/examples/webhook-receiver.js > /dev/null & pids+=($!)
wait_tcp "$HPORT"
PUB=$(free_port); ADM=$(free_port)
$BIN/herald-gateway --jwt-hs256-secret "$SECRET" --admin-api-keys k \
  --listen "127.0.0.1:$PUB" --admin-listen "127.0.0.1:$ADM" --log-level warn \
  --redis-url "redis://127.0.0.1:$RPORT" \
  --webhooks-url "http://127.0.0.1:$HPORT/" --webhooks-secret "$HOOK_SECRET" \
  --webhooks-events session.connected,session.disconnected & pids+=($!)
wait_tcp "$ADM"

sample() { # prints "<ok total> <queue>"
  curl -fs "http://127.0.0.1:$ADM/metrics" | awk '
    /^herald_webhooks_total\{.*result="ok"/ { ok += $NF }
    /^herald_webhook_queue / { q = $NF }
    END { printf "%d %d\n", ok, q }'
}

$BIN/herald-loadtest churn --url "ws://127.0.0.1:$PUB/ws" --secret "$SECRET" \
  --rate "$RATE" --duration "$DUR" --quiet --out target/bench/webhooks > /dev/null & LT=$!; pids+=($LT)
start=$(date +%s.%N); peak_q=0; last_ok=0; first_ok_t=""; last_ok_t=""
while :; do
  sleep 1
  read -r ok q < <(sample)
  now=$(date +%s.%N)
  [ "$q" -gt "$peak_q" ] && peak_q=$q
  if [ "$ok" -gt "$last_ok" ]; then
    [ -n "$first_ok_t" ] || first_ok_t=$start
    last_ok_t=$now; last_ok=$ok
  fi
  if ! kill -0 "$LT" 2>/dev/null && [ "$q" -eq 0 ]; then break; fi
  if awk "BEGIN{exit !($now - $start > $DUR + 120)}"; then echo "the queue did not drain" >&2; break; fi
done
wait "$LT" || true
secs=$(awk "BEGIN{printf \"%.1f\", $last_ok_t - $first_ok_t}")
echo "sessions/s offered: $RATE for ${DUR}s; webhooks sent: $last_ok in ${secs}s = $(awk "BEGIN{printf \"%d\", $last_ok / ($last_ok_t - $first_ok_t)}")/s; peak queue: $peak_q"
