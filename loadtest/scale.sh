#!/usr/bin/env bash
# Scale on one machine: NODES gateway nodes on one Redis, CONNECTIONS clients
# opened at CONNECT_RATE per second over worker processes and source
# addresses (127.0.0.2…), each refused handshake retried after Retry-After
# as the SDK does; then a broadcast through Redis to all of them. Reports,
# per node, its connections and RSS per connection, and overall the connect
# percentiles (retries included), failures, delivery latency (p50/p99 and the
# last recipient of each event), lost and duplicated events. Loopback only;
# everything it starts is stopped when it ends.
#
#   loadtest/scale.sh                    # 10 nodes, 190,000 connections at 4,000/s
#   SMOKE=1 loadtest/scale.sh            # 3 nodes, 3,000 connections, debug build (CI)
#   NODES=4 CONNECTIONS=60000 loadtest/scale.sh
#   MILLION=1 loadtest/scale.sh          # 53 nodes, 1,000,000 connections at 2,000/s,
#                                        # 60 s idle window before the broadcast,
#                                        # subscribers wait up to 180 s for it (issue 27)
#
# GATEWAY_FLAGS="..." adds flags to every node (for example a longer
# heartbeat: "--heartbeat-interval 60s --heartbeat-timeout 150s").
#
# IDLE_SECONDS=n waits n seconds with every connection open before the
# broadcast and reports the gateways' CPU per connection over that window;
# the kernel's TCP socket counts and memory (/proc/net/sockstat) are
# sampled with the nodes' RSS.
#
# Needs redis-server, python3, curl. A process may hold at most 20,000 files
# here: each node holds CONNECTIONS/NODES (at most 19,000), each worker at
# most ~16,000.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=${SMOKE:-}
GATEWAY_FLAGS=${GATEWAY_FLAGS:-}
MILLION=${MILLION:-}
IDLE_SECONDS=${IDLE_SECONDS:-0}
NODES=${NODES:-10}
CONNECTIONS=${CONNECTIONS:-190000}
CONNECT_RATE=${CONNECT_RATE:-4000}
EVENTS_PER_SECOND=${EVENTS_PER_SECOND:-2}
BROADCAST_SECONDS=${BROADCAST_SECONDS:-5}
PROFILE=release
# Runtime threads per process: with NODES gateways and a dozen generator
# processes on a few cores, one each beats many threads switching.
THREADS=${THREADS:-1}
if [ -n "$MILLION" ]; then
  NODES=53 CONNECTIONS=1000000 CONNECT_RATE=${CONNECT_RATE_MILLION:-2000} IDLE_SECONDS=60 GRACE=${GRACE:-180}
fi
if [ -n "$SMOKE" ]; then
  NODES=3 CONNECTIONS=3000 CONNECT_RATE=1500 BROADCAST_SECONDS=3 PROFILE=debug
fi
OUT=${OUT:-target/scale}
SECRET=scale-secret-0123456789abcdef
KEY=scale-admin-key
PER_NODE=$(( (CONNECTIONS + NODES - 1) / NODES ))
PROCESSES=$(( (CONNECTIONS + 15999) / 16000 ))
# Source addresses with ports the generator picks itself (see
# `Settings::source`): left to the kernel, every connect() from one address
# searches that address's ports for a free 4-tuple, which at this scale
# costs more CPU than the gateways. Up to 12,000 connections per source, at
# ports from a base that changes per run (ports of an earlier run may still
# be in TIME_WAIT).
SOURCES=$(( (CONNECTIONS + 11999) / 12000 ))
[ "$SOURCES" -ge 2 ] || SOURCES=2
PORT_BASE=$(( 10000 + RANDOM % 40000 ))
if [ "$PER_NODE" -gt 19000 ]; then
  echo "scale: $PER_NODE connections per node is more than a process may hold here; add nodes" >&2
  exit 2
fi

ulimit -n "$(ulimit -Hn)"
if [ "$PROFILE" = release ]; then
  cargo build --release -q -p herald-gateway -p herald-loadtest
else
  cargo build -q -p herald-gateway -p herald-loadtest
fi
BIN=target/$PROFILE
rm -rf "$OUT"
mkdir -p "$OUT"

pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --maxclients 20000 \
  --dir "$OUT" >"$OUT/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.05; done

urls=() admins=() gpids=()
for n in $(seq 1 "$NODES"); do
  P=$(free_port)
  A=$(free_port)
  # shellcheck disable=SC2086 # GATEWAY_FLAGS is a list of words
  TOKIO_WORKER_THREADS=$THREADS "$BIN/herald-gateway" --redis-url "redis://127.0.0.1:$RP" --node-id "n$n" \
    --listen "127.0.0.1:$P" --admin-listen "127.0.0.1:$A" \
    --jwt-hs256-secret "$SECRET" --admin-api-keys "$KEY" \
    --limits-max-connections "$((PER_NODE + 500))" --log-level warn $GATEWAY_FLAGS >"$OUT/n$n.log" 2>&1 &
  pids+=($!)
  gpids+=($!)
  urls+=("ws://127.0.0.1:$P/ws")
  admins+=("http://127.0.0.1:$A")
done
for a in "${admins[@]}"; do wait_http "$a/readyz"; done
declare -A base
for p in "${gpids[@]}"; do base[$p]=$(rss_kib "$p"); done

# Peak RSS and connections per node while the clients are connected: one
# cluster-wide /v1/stats and /proc reads every 2 s (cheap: the machine is
# busy enough).
(
  while sleep 2; do
    stats=$(curl -fs -H "Authorization: Bearer $KEY" "${admins[0]}/v1/stats" || true)
    for i in "${!gpids[@]}"; do
      c=$(grep -o "\"node\":\"n$((i + 1))\",\"connections\":[0-9]*" <<<"$stats" | grep -o '[0-9]*$' || echo 0)
      echo "${gpids[$i]} ${c:-0} $(rss_kib "${gpids[$i]}")"
    done >"$OUT/sample.tmp" && mv "$OUT/sample.tmp" "$OUT/sample.$(date +%s%N)"
    echo "$(date +%s) $(grep '^TCP:' /proc/net/sockstat) $(awk '/MemAvailable/ {print "MemAvailable_kB", $2}' /proc/meminfo)" >>"$OUT/sockstat.txt"
  done
) &
sampler=$!
pids+=("$sampler")

started=$(date +%s)
TOKIO_WORKER_THREADS=$THREADS "$BIN/herald-loadtest" fanout --quiet --connections "$CONNECTIONS" --topics 1 \
  --connect-rate "$CONNECT_RATE" --retries 8 --processes "$PROCESSES" --sources "$SOURCES" \
  --port-base "$PORT_BASE" \
  --rate "$EVENTS_PER_SECOND" --batch 1 --duration "$BROADCAST_SECONDS" --last-recipient \
  --idle-before "$IDLE_SECONDS" --grace "${GRACE:-10}" \
  --url "$(IFS=,; echo "${urls[*]}")" --admin "$(IFS=,; echo "${admins[*]}")" \
  --admin-key "$KEY" --secret "$SECRET" --pid "$(IFS=,; echo "${gpids[*]}")" \
  --out "$OUT" | tee "$OUT/loadtest.txt"
kill "$sampler" 2>/dev/null || true
elapsed=$(( $(date +%s) - started ))
for i in "${!admins[@]}"; do
  curl -fs "${admins[$i]}/metrics" >"$OUT/n$((i + 1)).metrics" || true
done
shed=$(cat "$OUT"/n*.metrics | awk '/^herald_connections_shed_total/ {s+=$2} END {print s+0}')
accept_errors=$(cat "$OUT"/n*.metrics | awk '/^herald_accept_errors_total/ {s+=$2} END {print s+0}')
echo "somaxconn $(cat /proc/sys/net/core/somaxconn), tcp_max_syn_backlog $(cat /proc/sys/net/ipv4/tcp_max_syn_backlog)" >"$OUT/kernel.txt"

python3 - "$OUT" "$NODES" "$CONNECTIONS" "$CONNECT_RATE" "$elapsed" "${gpids[*]}" \
  "$(for p in "${gpids[@]}"; do printf '%s:%s ' "$p" "${base[$p]}"; done)" "$shed" "$accept_errors" <<'PY'
import glob, json, os, sys
out, nodes, connections, rate, elapsed, gpids, bases, shed, accept_errors = sys.argv[1:10]
base = dict(x.split(":") for x in bases.split())
peak = {}
for f in sorted(glob.glob(os.path.join(out, "sample.*"))):
    for line in open(f):
        pid, conns, rss = line.split()
        c, r = int(conns), int(rss)
        if c >= peak.get(pid, (0, 0))[0]:
            peak[pid] = (c, r)
report = json.load(open(os.path.join(out, "report.json")))
rows = []
for i, pid in enumerate(gpids.split()):
    c, r = peak.get(pid, (0, 0))
    per = (r - int(base[pid])) * 1024 / c if c else 0
    rows.append((f"n{i + 1}", c, r // 1024, per))
h = report.get("handshake") or {}
l = report.get("latency") or {}
lr = report.get("last_recipient") or {}
d = report["delivery"]
ms = lambda us: f"{us / 1000:.1f}"
lines = [
    f"# Scale run: {nodes} nodes, {connections} connections at {rate}/s",
    "",
    "| node | connections | RSS (MiB) | RSS per connection (bytes) |",
    "|---|---|---|---|",
]
lines += [f"| {n} | {c} | {mib} | {per:.0f} |" for n, c, mib, per in rows]
lines += [
    "",
    "| measure | value |",
    "|---|---|",
    f"| connections open / failed after retries / retries | {report['connections']} / {report['connect_errors']} / {report.get('connect_retries', 0)} |",
    f"| connect (first attempt to 101, retries included) p50 / p99 / max | {ms(h.get('p50_us', 0))} / {ms(h.get('p99_us', 0))} / {ms(h.get('max_us', 0))} ms |",
    f"| events broadcast | {report['published']} |",
    f"| deliveries expected / received / lost / duplicated | {d['expected']} / {d['received']} / {d['lost']} / {d['duplicated']} |",
    f"| delivery p50 / p99 (publish to socket) | {ms(l.get('p50_us', 0))} / {ms(l.get('p99_us', 0))} ms |",
    f"| last recipient of each event p50 / p99 / max | {ms(lr.get('p50_us', 0))} / {ms(lr.get('p99_us', 0))} / {ms(lr.get('max_us', 0))} ms |",
    f"| handshakes shed by the nodes (503 + Retry-After) / accept errors | {shed} / {accept_errors} |",
    f"| kernel | {open(os.path.join(out, 'kernel.txt')).read().strip()} |",
]
idle = report.get("idle")
if idle:
    lines.append(f"| idle window: gateways' CPU per connection per second ({idle['seconds']:.0f} s, {idle['connections']} connections) | {idle['cpu_us_per_connection_second']:.3f} µs |")
sock = os.path.join(out, "sockstat.txt")
if os.path.exists(sock):
    peak = max((l.split() for l in open(sock)), key=lambda f: int(f[f.index("inuse") + 1]) if "inuse" in f else 0)
    if "inuse" in peak:
        tcp_in = int(peak[peak.index("inuse") + 1]); mem = int(peak[peak.index("mem") + 1])
        avail = int(peak[peak.index("MemAvailable_kB") + 1]) if "MemAvailable_kB" in peak else 0
        lines.append(f"| kernel at the peak: TCP sockets in use / TCP buffer memory / MemAvailable | {tcp_in} / {mem * 4 // 1024} MiB / {avail // 1024} MiB |")
lines += [
    f"| whole run | {elapsed} s |",
]
text = "\n".join(lines) + "\n"
open(os.path.join(out, "scale.md"), "w").write(text)
print(text)
failed = report["connect_errors"] > 0 or d["lost"] > 0 or d["duplicated"] > 0
sys.exit(1 if failed else 0)
PY
