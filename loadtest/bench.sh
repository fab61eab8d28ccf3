#!/usr/bin/env bash
# Benchmarks Herald side by side with a baseline peer, in one session, with
# the same generator settings for each: Herald as a single node, Herald as two
# nodes + Redis, and the classic Node.js `ws` broadcast server (installed from
# npm into a scratch directory). Prints a table with ratios and leaves every
# report (JSON, Markdown, SVG) under target/bench/.
#
#   loadtest/bench.sh            # everything (about 8 minutes)
#   QUICK=1 loadtest/bench.sh    # smaller counts, for a smoke run
#   HERALD_BIN=DIR OUT=DIR loadtest/bench.sh
#                                # measure the herald-gateway and herald-admin
#                                # in DIR (another build, for a before/after
#                                # comparison) with this tree's generator
#   ONLY=latency loadtest/bench.sh
#                                # just the low-rate latency rows (LAT_ROWS,
#                                # "subscribers events/s" pairs), each with
#                                # Node alongside
#   ONLY=idle,fanout,encodings loadtest/bench.sh
#                                # any of the sections, comma-separated:
#                                # latency, idle (memory per connection),
#                                # fanout (the broadcast, Herald and Node),
#                                # encodings (JSON and MessagePack, CPU and
#                                # bytes per delivery), compat (/ws against
#                                # /connection/websocket in JSON and Protobuf:
#                                # idle memory and the broadcast, Node alongside),
#                                # rest (everything else)
#   SKIP_BUILD=1 ...             # use the release binaries already built
#
# Needs: cargo, redis-server, node + npm. Loopback only; every process it
# starts is stopped when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."

SECRET=bench-secret-0123456789abcdef
KEY=bench-admin-key
OUT=${OUT:-target/bench}
QUICK=${QUICK:-}
IDLE=${IDLE:-19000}
SUBS=${SUBS:-10000}
HOLD=${HOLD:-50}
DUR=${DUR:-10}
# Issue 14's latency rows: "subscribers events/s" pairs, one topic.
LAT_ROWS=${LAT_ROWS:-"5000 10,100 1000"}
# ONLY=section,... runs just those sections (see above); empty runs all.
ONLY=${ONLY:-}
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
if [ -n "$QUICK" ]; then IDLE=2000; SUBS=1000; HOLD=5; DUR=3; LAT_ROWS="1000 10,100 1000"; fi

ulimit -n "$(ulimit -Hn)"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p herald-gateway -p herald-admin-api -p herald-loadtest
BIN=target/release
HBIN=${HERALD_BIN:-$BIN}
rm -rf "$OUT"; mkdir -p "$OUT"

pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# -- the baseline peer: Node's ws, broadcasting every text frame to all others
NODEWS=$(mktemp -d)
(cd "$NODEWS" && npm init -y >/dev/null 2>&1 && npm install --silent ws@8 >/dev/null 2>&1)
cat > "$NODEWS/server.js" <<'JS'
const { WebSocketServer } = require('ws');
const wss = new WebSocketServer({ port: Number(process.argv[2]), host: '127.0.0.1', perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    for (const client of wss.clients) {
      if (client !== ws && client.readyState === 1) client.send(data, { binary: isBinary });
    }
  });
});
// HEARTBEAT_MS: the ws README's heartbeat (ping every interval, terminate a
// client that did not answer the last one), for the idle CPU row.
const beat = Number(process.env.HEARTBEAT_MS || 0);
if (beat > 0) {
  wss.on('connection', (ws) => { ws.isAlive = true; ws.on('pong', () => { ws.isAlive = true; }); });
  setInterval(() => {
    for (const ws of wss.clients) {
      if (!ws.isAlive) { ws.terminate(); continue; }
      ws.isAlive = false;
      ws.ping();
    }
  }, beat);
}
JS
NODE_VERSION=$(node --version); WS_VERSION=$(node -e "console.log(require('$NODEWS/node_modules/ws/package.json').version)")

start_herald() { # $1 = extra flags; sets HP (pid), HPUB, HADM
  HPUB=$(free_port); HADM=$(free_port)
  # shellcheck disable=SC2086
  $HBIN/herald-gateway --jwt-hs256-secret "$SECRET" --admin-api-keys "$KEY" \
    --listen "127.0.0.1:$HPUB" --admin-listen "127.0.0.1:$HADM" --log-level warn $1 &
  HP=$!; pids+=("$HP"); wait_http "http://127.0.0.1:$HADM/readyz"
}
start_node() { # $1 = heartbeat ms (optional); sets NP, NPORT
  NPORT=$(free_port)
  HEARTBEAT_MS=${1:-0} node "$NODEWS/server.js" "$NPORT" & NP=$!; pids+=("$NP")
  for _ in $(seq 1 50); do (echo > "/dev/tcp/127.0.0.1/$NPORT") 2>/dev/null && return 0; sleep 0.1; done
}
lt() { # $1 = name, rest = loadtest args
  local name=$1; shift
  echo "== $name" >&2
  $BIN/herald-loadtest "$@" --quiet --out "$OUT/$name" > /dev/null
}

# 0. Low-rate latency, Herald and Node ws side by side, a fresh server per
#    row: one topic, 100-byte events, Herald publishing through the admin
#    API one event per call, Node's publisher a WebSocket client; first
#    recipient, median, p99 and the server's CPU per delivery.
IFS=, read -ra lat_rows <<< "$LAT_ROWS"
want latency || lat_rows=()
for row in "${lat_rows[@]}"; do
  read -r n rate <<< "$row"
  LAT=(--connections "$n" --rate "$rate" --batch 1 --publishers 1 --payload 60 --duration "$DUR" --sources 4 --last-recipient)
  start_herald ""
  lt "lat-$n-$rate-herald" fanout --secret "$SECRET" --admin-key "$KEY" --url "ws://127.0.0.1:$HPUB/ws" \
    --admin "http://127.0.0.1:$HADM" "${LAT[@]}" --pid "$HP"
  stop "$HP"
  start_node
  lt "lat-$n-$rate-node" fanout --target raw --url "ws://127.0.0.1:$NPORT/" "${LAT[@]}" --pid "$NP"
  stop "$NP"
done

# 1. Idle connections: memory and CPU per connection. The hold is two
#    heartbeats (50 s at the default 25 s), so the CPU is the steady state:
#    each connection is pinged twice in it. Node twice: as a bare broadcast
#    server (no heartbeat) and with the ws README's heartbeat at 25 s, the
#    same work as Herald's. Then Herald over wss:// (the test certificate),
#    opened at 1,000/s (TLS handshakes).
if want idle; then
TLS_FIX=gateway/tests/fixtures
start_herald ""
lt idle-herald connect --secret "$SECRET" --url "ws://127.0.0.1:$HPUB/ws" --connections "$IDLE" \
  --rate 3000 --duration "$HOLD" --processes 2 --sources 4 --pid "$HP"
stop "$HP"
start_node
lt idle-node connect --target raw --url "ws://127.0.0.1:$NPORT/" --connections "$IDLE" \
  --rate 3000 --duration "$HOLD" --processes 2 --sources 4 --pid "$NP"
stop "$NP"
start_node 25000
lt idle-node-beat connect --target raw --url "ws://127.0.0.1:$NPORT/" --connections "$IDLE" \
  --rate 3000 --duration "$HOLD" --processes 2 --sources 4 --pid "$NP"
stop "$NP"
# The heartbeat's floor on this machine (loadtest/sendbench's `heartbeat`:
# no WebSocket library, no runtime, one epoll thread and io_uring pings),
# then Herald driven by that program's own clients: on loopback a server's
# CPU includes delivering each Ping into its client's socket and waking the
# client, so only the same clients make the two comparable.
(cd loadtest/sendbench && cargo build --release -q)
FLOOR=loadtest/sendbench/target/release/heartbeat
$FLOOR "$IDLE" 25 "$HOLD" > "$OUT/idle-floor.txt"
start_herald ""
FLOOR_TOKEN=$(python3 - "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
head = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b(json.dumps({"sub": "floor", "exp": int(time.time()) + 7200}).encode())
sig = b(hmac.new(sys.argv[1].encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest())
print(f"{head}.{claims}.{sig}")
PY
)
$FLOOR herald "127.0.0.1:$HPUB" "/ws?token=$FLOOR_TOKEN" "$HP" "$IDLE" "$HOLD" > "$OUT/idle-herald-floor.txt"
stop "$HP"
start_herald "--tls-cert-file $TLS_FIX/tls_cert.pem --tls-key-file $TLS_FIX/tls_key.pem"
lt idle-herald-wss connect --secret "$SECRET" --url "wss://127.0.0.1:$HPUB/ws" --tls-ca "$TLS_FIX/tls_ca.pem" \
  --connections "$IDLE" --rate 1000 --duration "$HOLD" --processes 2 --sources 4 --pid "$HP"
stop "$HP"
fi

# 2. Broadcast fan-out: one topic, $SUBS subscribers, 100-byte events,
#    offered at 100 events/s (1,000,000 deliveries/s with 10,000 subscribers).
FAN=(--connections "$SUBS" --rate 100 --batch 5 --publishers 1 --payload 60 --duration "$DUR" --sources 4)
if want fanout; then
start_herald ""
lt fanout-herald fanout --secret "$SECRET" --admin-key "$KEY" --url "ws://127.0.0.1:$HPUB/ws" \
  --admin "http://127.0.0.1:$HADM" "${FAN[@]}" --pid "$HP"
stop "$HP"
start_node
# Node may not survive this one (it buffers without bound): a fresh process
# for the next measurement either way.
lt fanout-node fanout --target raw --url "ws://127.0.0.1:$NPORT/" "${FAN[@]}" --pid "$NP" || true
stop "$NP"
fi

# 2b. Encodings: the same 100-byte ticks to $ENC_SUBS subscribers over
#     protocol 1 (JSON text) and protocol 2 MessagePack, a fresh node each:
#     server CPU and payload bytes per delivery.
ENC_SUBS=${ENC_SUBS:-1000}
if want encodings; then
for proto in json msgpack; do
  start_herald ""
  lt "enc-$proto" fanout --secret "$SECRET" --admin-key "$KEY" --url "ws://127.0.0.1:$HPUB/ws" \
    --admin "http://127.0.0.1:$HADM" --connections "$ENC_SUBS" --rate 100 --batch 1 --publishers 1 \
    --payload 60 --duration "$DUR" --sources 4 --protocol "$proto" --pid "$HP"
  stop "$HP"
done
fi

# 2c. The Centrifugo-compatible endpoint against /ws, a fresh node each,
#     Node's idle memory alongside: idle RSS per connection ($IDLE), and the
#     broadcast of (2) with $ENC_SUBS subscribers.
if want compat; then
for proto in json centrifugo-json centrifugo-protobuf; do
  path=/connection/websocket; [ "$proto" = json ] && path=/ws
  start_herald "--compat-centrifugo true"
  lt "compat-idle-$proto" connect --secret "$SECRET" --url "ws://127.0.0.1:$HPUB$path" --protocol "$proto" \
    --connections "$IDLE" --rate 3000 --duration "$HOLD" --processes 2 --sources 4 --pid "$HP"
  stop "$HP"
  start_herald "--compat-centrifugo true"
  lt "compat-fanout-$proto" fanout --secret "$SECRET" --admin-key "$KEY" --url "ws://127.0.0.1:$HPUB$path" \
    --admin "http://127.0.0.1:$HADM" --protocol "$proto" --connections "$ENC_SUBS" --rate 100 --batch 5 \
    --publishers 1 --payload 60 --duration "$DUR" --sources 4 --pid "$HP"
  stop "$HP"
done
start_node
lt compat-idle-node connect --target raw --url "ws://127.0.0.1:$NPORT/" --connections "$IDLE" \
  --rate 3000 --duration "$HOLD" --processes 2 --sources 4 --pid "$NP"
stop "$NP"
fi

if want rest; then
start_herald ""
# 3. Latency: 100 subscribers per topic, one event per publish call, at
#    rising rates; and the maximum with batches of 10.
for rate in 200 1000 3000; do
  lt "topics100-herald-$rate" fanout --secret "$SECRET" --admin-key "$KEY" --url "ws://127.0.0.1:$HPUB/ws" \
    --admin "http://127.0.0.1:$HADM" --connections "$SUBS" --topics $((SUBS / 100)) --rate "$rate" \
    --batch 1 --publishers 4 --payload 60 --duration "$DUR" --sources 4
done
lt "topics100-herald-max" fanout --secret "$SECRET" --admin-key "$KEY" --url "ws://127.0.0.1:$HPUB/ws" \
  --admin "http://127.0.0.1:$HADM" --connections "$SUBS" --topics $((SUBS / 100)) --rate 10000 \
  --batch 10 --publishers 4 --payload 60 --duration "$DUR" --sources 4
# 4. The last recipient of each broadcast, at 5 events/s.
lt last-herald fanout --secret "$SECRET" --admin-key "$KEY" --url "ws://127.0.0.1:$HPUB/ws" \
  --admin "http://127.0.0.1:$HADM" --connections "$SUBS" --rate 5 --batch 1 --publishers 1 \
  --payload 60 --duration "$DUR" --sources 4 --last-recipient
stop "$HP"
start_node
lt last-node fanout --target raw --url "ws://127.0.0.1:$NPORT/" --connections "$SUBS" --rate 5 \
  --batch 1 --publishers 1 --payload 60 --duration "$DUR" --sources 4 --last-recipient
stop "$NP"

# 5. Through Redis: two nodes and herald-admin.
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
RP=$!; pids+=("$RP"); sleep 0.3
R="redis://127.0.0.1:$RPORT"
start_herald "--redis-url $R --node-id n1"; P1=$HP; U1=$HPUB
start_herald "--redis-url $R --node-id n2"; P2=$HP; U2=$HPUB
APORT=$(free_port)
$HBIN/herald-admin --redis-url "$R" --admin-api-keys "$KEY" --admin-listen "127.0.0.1:$APORT" --log-level warn &
AP=$!; pids+=("$AP"); wait_http "http://127.0.0.1:$APORT/readyz"
# 101 topics, 2 subscribers each, one on each node: events/s through Redis.
lt redis-events fanout --secret "$SECRET" --admin-key "$KEY" --url "ws://127.0.0.1:$U1/ws,ws://127.0.0.1:$U2/ws" \
  --admin "http://127.0.0.1:$APORT" --connections 202 --topics 101 --rate 150000 --batch 1000 \
  --publishers 4 --payload 60 --duration "$DUR"
# The broadcast of (2) spread over the two nodes.
lt fanout-herald2 fanout --secret "$SECRET" --admin-key "$KEY" --url "ws://127.0.0.1:$U1/ws,ws://127.0.0.1:$U2/ws" \
  --admin "http://127.0.0.1:$APORT" "${FAN[@]}" --pid "$P1,$P2"
stop "$AP"; stop "$P1"; stop "$P2"; stop "$RP"
fi
rm -rf "$NODEWS"

python3 - "$OUT" "$NODE_VERSION" "$WS_VERSION" "$LAT_ROWS" <<'PY'
import json, os, platform, re, sys
out, node, ws, lat_rows = sys.argv[1:5]
def r(name):
    return json.load(open(os.path.join(out, name, "report.json")))
def ms(us): return f"{us/1000:.2f}"
def cpu_per_delivery(rep):
    before, after = rep.get("usage_before") or [], rep.get("usage_after") or []
    if not before or not after or not rep["delivery"]["received"]:
        return float("nan")
    return (after[0]["cpu_ms"] - before[0]["cpu_ms"]) * 1000 / rep["delivery"]["received"]
def lat(rep):
    f, l = rep["first_recipient"], rep["latency"]
    return f"{ms(f['p50_us'])} / {ms(l['p50_us'])} / {ms(l['p99_us'])}"
rows = []
def has(name): return os.path.exists(os.path.join(out, name, "report.json"))
for row in lat_rows.split(","):
    n, rate = row.split()
    if not has(f"lat-{n}-{rate}-herald"):
        continue
    h, nd = r(f"lat-{n}-{rate}-herald"), r(f"lat-{n}-{rate}-node")
    rows.append((f"{n} subs, {rate} ev/s: first recipient p50 / p50 / p99 ms", lat(h), lat(nd),
                 f"p50 {nd['latency']['p50_us']/max(h['latency']['p50_us'],1):.2f}x, p99 {nd['latency']['p99_us']/max(h['latency']['p99_us'],1):.2f}x"))
    rows.append((f"{n} subs, {rate} ev/s: server CPU per delivery (µs), lost", f"{cpu_per_delivery(h):.2f}, {h['delivery']['lost']}", f"{cpu_per_delivery(nd):.2f}, {nd['delivery']['lost']}", ""))
if has("idle-herald"):
    ih, inode = r("idle-herald"), r("idle-node")
    ph, pn = ih["per_connection"], inode["per_connection"]
    rows.append(("idle RSS per connection (bytes)", f"{ph['rss_bytes']:.0f}", f"{pn['rss_bytes']:.0f}", f"{pn['rss_bytes']/max(ph['rss_bytes'],1):.1f}x less"))
    rows.append(("idle CPU per connection (µs/s), Node without a heartbeat", f"{ph['cpu_us_per_second']:.3f}", f"{pn['cpu_us_per_second']:.3f}", ""))
    if has("idle-node-beat"):
        pb = r("idle-node-beat")["per_connection"]
        rows.append(("idle CPU per connection (µs/s), both pinging every 25 s", f"{ph['cpu_us_per_second']:.3f}", f"{pb['cpu_us_per_second']:.3f}", f"{pb['cpu_us_per_second']/max(ph['cpu_us_per_second'],1e-9):.2f}x less"))
    floor_txt = os.path.join(out, "idle-floor.txt")
    if os.path.exists(floor_txt):
        per_s = lambda f: float(re.search(r"= ([0-9.]+) us per connection per second", open(os.path.join(out, f)).read()).group(1))
        hf, fl = per_s("idle-herald-floor.txt"), per_s("idle-floor.txt")
        rows.append(("idle CPU per connection (µs/s), 25 s heartbeat, the floor program's clients (peer column: the floor program)", f"{hf:.3f}", f"{fl:.3f}", f"{hf/max(fl,1e-9):.2f}x the floor"))
    if has("idle-herald-wss"):
        w = r("idle-herald-wss")
        pw = w["per_connection"]
        rows.append(("wss:// idle RSS per connection (bytes), CPU (µs/s), failed", f"{pw['rss_bytes']:.0f}, {pw['cpu_us_per_second']:.3f}, {w['connect_errors']}", "", f"{pw['rss_bytes']/max(ph['rss_bytes'],1):.2f}x ws://"))
if has("fanout-herald"):
    fh = r("fanout-herald")
    fn = r("fanout-node") if has("fanout-node") else {"deliveries_per_second": 0, "delivery": {"lost": "n/a"}, "latency": {"p99_us": 0}}
    rows.append(("broadcast deliveries/s", f"{fh['deliveries_per_second']:.0f}", f"{fn['deliveries_per_second']:.0f}", f"{fh['deliveries_per_second']/max(fn['deliveries_per_second'],1):.1f}x"))
    rows.append(("broadcast lost", str(fh["delivery"]["lost"]), str(fn["delivery"]["lost"]), ""))
    rows.append(("broadcast p99 (ms)", ms(fh["latency"]["p99_us"]), ms(fn["latency"]["p99_us"]), ""))
if has("enc-json"):
    for proto in ("json", "msgpack"):
        e = r(f"enc-{proto}")
        got = max(e["delivery"]["received"], 1)
        rows.append((f"{proto}: server CPU per delivery (µs), payload bytes per delivery, lost", f"{cpu_per_delivery(e):.2f}, {e['delivery'].get('received_bytes', 0)/got:.0f}, {e['delivery']['lost']}", "", ""))
if has("compat-idle-json"):
    node_rss = r("compat-idle-node")["per_connection"]["rss_bytes"]
    for proto in ("json", "centrifugo-json", "centrifugo-protobuf"):
        i, f = r(f"compat-idle-{proto}"), r(f"compat-fanout-{proto}")
        name = "/ws (protocol 1)" if proto == "json" else f"/connection/websocket {proto[11:]}"
        rss = i["per_connection"]["rss_bytes"]
        rows.append((f"{name}: idle RSS per connection (bytes), failed", f"{rss:.0f}, {i['connect_errors']}", f"{node_rss:.0f}", f"{node_rss/max(rss,1):.2f}x less"))
        rows.append((f"{name}: broadcast deliveries/s, server CPU per delivery (µs), lost", f"{f['deliveries_per_second']:.0f}, {cpu_per_delivery(f):.2f}, {f['delivery']['lost']}", "", ""))
def table():
    print(f"\nmachine: {os.cpu_count()} cores, {platform.platform()}; node {node}, ws {ws}\n")
    print("| measure | Herald | Node ws | ratio |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
if not has("last-herald"):
    table()
    sys.exit(0)
f2 = r("fanout-herald2")
lh, ln = r("last-herald"), r("last-node")
rows.append(("last recipient p99 at 5 events/s (ms)", ms(lh["last_recipient"]["p99_us"]), ms(ln["last_recipient"]["p99_us"]), f"{ln['last_recipient']['p99_us']/max(lh['last_recipient']['p99_us'],1):.1f}x"))
rows.append(("broadcast over 2 nodes + Redis, deliveries/s", f"{f2['deliveries_per_second']:.0f}", "", ""))
re_ = r("redis-events")
rows.append(("events/s through herald-admin + Redis (2 nodes)", f"{re_['published']/re_['seconds']:.0f}", "", f"{re_['deliveries_per_second']:.0f} deliveries/s, lost {re_['delivery']['lost']}"))
for rate in ("200", "1000", "3000", "max"):
    t = r(f"topics100-herald-{rate}")
    label = "offered 10000 ev/s in batches of 10" if rate == "max" else f"{rate} ev/s, one per call"
    rows.append((f"100 subs/topic, {label}: deliveries/s, p50 / p99 ms", f"{t['deliveries_per_second']:.0f}, {ms(t['latency']['p50_us'])} / {ms(t['latency']['p99_us'])}", "", ""))
table()
PY
