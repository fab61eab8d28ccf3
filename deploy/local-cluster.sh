#!/usr/bin/env bash
# The topology of deploy/compose.yaml without Docker: Redis, three gateways,
# herald-admin, HAProxy and Prometheus as processes on 127.0.0.1, started
# from the same herald.toml, haproxy.cfg and prometheus.yml (Grafana is left
# out: import deploy/grafana/herald.json into yours).
#
#   deploy/local-cluster.sh start     start everything, wait until ready, print the URLs
#   deploy/local-cluster.sh roll      rolling restart: each gateway in turn gets SIGTERM,
#                                     drains, exits, starts again and is back in HAProxy
#   deploy/local-cluster.sh restart gw2   the same for one gateway
#   deploy/local-cluster.sh status    what runs, and HAProxy's view of the gateways
#   deploy/local-cluster.sh stop      stop everything (gateways drain first)
#
# Environment:
#   HERALD_BIN_DIR          herald-gateway and herald-admin (default: target/release
#                           if both are there, else target/debug)
#   HERALD_LOCAL_DIR        state: ports, keys (cluster.env), pids, logs, Prometheus data
#                           (default: target/local-cluster)
#   HERALD_LOCAL_BASE_PORT  fixed ports: HAProxy BASE, its stats BASE+1, Prometheus
#                           BASE+2, Redis BASE+3, herald-admin BASE+4, gateway N public
#                           BASE+10N and admin BASE+10N+1 (default: free ports, picked
#                           at start)
#   HERALD_JWT_SECRET, HERALD_ADMIN_KEY   generated when unset
#   HERALD_DRAIN_TIMEOUT, any HERALD_*     passed to the gateways and herald-admin
#                                          (over deploy/herald.toml)
#
# Needs redis-server, haproxy and prometheus on PATH (Debian: redis-server,
# haproxy, prometheus; scripts/deps.sh installs them). Every wait is bounded.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
deploy="$root/deploy"
dir="${HERALD_LOCAL_DIR:-$root/target/local-cluster}"
env_file="$dir/cluster.env"
gateways=(gw1 gw2 gw3)

die() { echo "local-cluster: $*" >&2; exit 1; }
say() { echo "local-cluster: $*" >&2; }

# wait_for SECONDS WHAT COMMAND...: run COMMAND every 100 ms until it
# succeeds; fail naming WHAT after SECONDS.
wait_for() {
  local seconds="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${seconds}s waiting for $what"
    sleep 0.1
  done
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }

# Seconds in a Herald duration (500ms, 3s, 2m, 1h, or bare seconds), rounded up.
duration_s() {
  local v="$1"
  case "$v" in
    *ms) echo $(((${v%ms} + 999) / 1000)) ;;
    *s) echo "${v%s}" ;;
    *m) echo $((${v%m} * 60)) ;;
    *h) echo $((${v%h} * 3600)) ;;
    *) echo "$v" ;;
  esac
}

free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

pid_of() { cat "$dir/pids/$1.pid" 2>/dev/null || true; }

# The process recorded for NAME, if it is still the program we started.
alive() {
  local pid
  pid="$(pid_of "$1")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}

# The program that runs as NAME.
program_of() {
  case "$1" in
    gw*) echo herald-gateway ;;
    admin) echo herald-admin ;;
    redis) echo redis-server ;;
    *) echo "$1" ;;
  esac
}

# launch NAME COMMAND...: run COMMAND in the background, detached from this
# shell, logging to logs/NAME.log, and record its pid.
launch() {
  local name="$1"
  shift
  nohup "$@" >>"$dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/pids/$name.pid"
}

load_env() {
  [ -r "$env_file" ] || die "no cluster in $dir (run: $0 start)"
  # shellcheck disable=SC1090
  source "$env_file"
}

# HAProxy's state of one gateway ("UP", "DOWN", "UP 1/2", …).
lb_state() {
  curl -fsS --max-time 2 "$HERALD_LB_STATS_URL;csv" |
    awk -F, -v s="$1" '$1 == "gateways" && $2 == s { print $18 }'
}
lb_up() { [ "$(lb_state "$1")" = UP ]; }
lb_out() { local state; state="$(lb_state "$1")" && [ -n "$state" ] && [ "$state" != UP ]; }

start_gateway() {
  local n="${1#gw}" public admin
  public="GW${n}_PUBLIC"
  admin="GW${n}_ADMIN"
  launch "$1" env HERALD_REDIS_URL="$REDIS_URL" HERALD_JWT__HS256_SECRET="$HERALD_JWT_SECRET" \
    HERALD_ADMIN__API_KEYS="$HERALD_ADMIN_KEY" \
    "$HERALD_BIN_DIR/herald-gateway" --config "$deploy/herald.toml" --node-id "$1" \
    --listen "${!public}" --admin-listen "${!admin}"
}

gateway_ready() {
  local admin="GW${1#gw}_ADMIN"
  http_ok "http://${!admin}/readyz"
}

# stop_process NAME PATTERN SECONDS: SIGTERM, wait up to SECONDS for the
# exit, then SIGKILL.
stop_process() {
  local name="$1" pattern="$2" seconds="$3" pid
  pid="$(pid_of "$name")"
  if alive "$name" "$pattern"; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + seconds))
    while alive "$name" "$pattern" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$name" "$pattern"; then
      say "$name did not stop within ${seconds}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$dir/pids/$name.pid"
}

cmd_start() {
  command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
  command -v haproxy >/dev/null || die "haproxy not found (apt-get install haproxy)"
  command -v prometheus >/dev/null || die "prometheus not found (apt-get install prometheus)"
  local bin="${HERALD_BIN_DIR:-}"
  if [ -z "$bin" ]; then
    bin="$root/target/debug"
    [ -x "$root/target/release/herald-gateway" ] && [ -x "$root/target/release/herald-admin" ] &&
      bin="$root/target/release"
  fi
  bin="$(cd "$bin" && pwd)"
  if [ ! -x "$bin/herald-gateway" ] || [ ! -x "$bin/herald-admin" ]; then
    die "herald-gateway and herald-admin not found in $bin (cargo build, or set HERALD_BIN_DIR)"
  fi
  if [ -r "$env_file" ]; then
    for name in redis "${gateways[@]}" admin haproxy prometheus; do
      ! alive "$name" "$(program_of "$name")" || die "a cluster is already running in $dir (run: $0 stop)"
    done
  fi

  mkdir -p "$dir/logs" "$dir/pids" "$dir/prometheus/targets" "$dir/prometheus/data"
  local ports
  if [ -n "${HERALD_LOCAL_BASE_PORT:-}" ]; then
    local b="$HERALD_LOCAL_BASE_PORT"
    ports="$b $((b + 1)) $((b + 2)) $((b + 3)) $((b + 4)) $((b + 10)) $((b + 11)) $((b + 20)) $((b + 21)) $((b + 30)) $((b + 31))"
  else
    ports="$(free_ports 11)"
  fi
  local lb stats prom redis admin g1 a1 g2 a2 g3 a3
  read -r lb stats prom redis admin g1 a1 g2 a2 g3 a3 <<<"$ports"
  local drain="${HERALD_DRAIN_TIMEOUT:-30s}"
  local nofile
  nofile="$(ulimit -n)"
  [ "$nofile" = unlimited ] && nofile=100000
  local maxconn=$(((nofile - 200) / 2))
  ((maxconn <= 50000)) || maxconn=50000

  umask 077
  cat >"$env_file" <<EOF
# Written by deploy/local-cluster.sh start; read by its other commands and by tests.
HERALD_BIN_DIR='$bin'
HERALD_JWT_SECRET='${HERALD_JWT_SECRET:-$(random_hex 24)}'
HERALD_ADMIN_KEY='${HERALD_ADMIN_KEY:-$(random_hex 16)}'
DRAIN_TIMEOUT_S=$(duration_s "$drain")
REDIS_PORT=$redis
REDIS_URL='redis://127.0.0.1:$redis'
HERALD_LB_URL='ws://127.0.0.1:$lb/ws'
HERALD_LB_STATS_URL='http://127.0.0.1:$stats/stats'
HERALD_LB_MAXCONN=$maxconn
HERALD_ADMIN_URL='http://127.0.0.1:$admin'
HERALD_PROMETHEUS_URL='http://127.0.0.1:$prom'
GW1_PUBLIC='127.0.0.1:$g1'
GW1_ADMIN='127.0.0.1:$a1'
GW2_PUBLIC='127.0.0.1:$g2'
GW2_ADMIN='127.0.0.1:$a2'
GW3_PUBLIC='127.0.0.1:$g3'
GW3_ADMIN='127.0.0.1:$a3'
EOF
  umask 022
  load_env

  launch redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no
  wait_for 10 "redis-server on port $REDIS_PORT" redis-cli -p "$REDIS_PORT" ping

  for gw in "${gateways[@]}"; do start_gateway "$gw"; done
  launch admin env HERALD_REDIS_URL="$REDIS_URL" HERALD_ADMIN__API_KEYS="$HERALD_ADMIN_KEY" \
    "$HERALD_BIN_DIR/herald-admin" --config "$deploy/herald.toml" --node-id admin \
    --admin-listen "${HERALD_ADMIN_URL#http://}"
  for gw in "${gateways[@]}"; do wait_for 20 "$gw ready" gateway_ready "$gw"; done
  wait_for 20 "herald-admin ready" http_ok "$HERALD_ADMIN_URL/readyz"

  # The same HAProxy file as compose; only the addresses differ.
  launch haproxy env HERALD_GW1="$GW1_PUBLIC" HERALD_GW2="$GW2_PUBLIC" HERALD_GW3="$GW3_PUBLIC" \
    HERALD_LB_BIND="127.0.0.1:$lb" HERALD_LB_STATS_BIND="127.0.0.1:$stats" \
    HERALD_LB_MAXCONN="$HERALD_LB_MAXCONN" haproxy -db -f "$deploy/haproxy/haproxy.cfg"
  for gw in "${gateways[@]}"; do wait_for 20 "HAProxy to see $gw UP" lb_up "$gw"; done

  # The same Prometheus file as compose (linked, so that its relative paths
  # find the targets written here); only the targets differ.
  ln -sf "$deploy/prometheus/prometheus.yml" "$dir/prometheus/prometheus.yml"
  ln -sf "$deploy/prometheus/alerts.yml" "$dir/prometheus/alerts.yml"
  printf -- '- targets: [%s, %s, %s]\n' "$GW1_ADMIN" "$GW2_ADMIN" "$GW3_ADMIN" \
    >"$dir/prometheus/targets/gateways.yml"
  printf -- '- targets: [%s]\n' "${HERALD_ADMIN_URL#http://}" >"$dir/prometheus/targets/admin.yml"
  printf -- '- targets: [127.0.0.1:%s]\n' "$stats" >"$dir/prometheus/targets/haproxy.yml"
  launch prometheus prometheus --config.file="$dir/prometheus/prometheus.yml" \
    --storage.tsdb.path="$dir/prometheus/data" --web.listen-address="127.0.0.1:$prom" \
    --log.level=warn
  wait_for 30 "Prometheus ready" http_ok "$HERALD_PROMETHEUS_URL/-/ready"

  cat <<EOF
Herald local cluster running (state and logs in $dir):
  clients      $HERALD_LB_URL?token=JWT   (HAProxy)
  publish      $HERALD_ADMIN_URL/v1/publish   (herald-admin; Authorization: Bearer \$HERALD_ADMIN_KEY)
  HAProxy      $HERALD_LB_STATS_URL
  Prometheus   $HERALD_PROMETHEUS_URL
  gateways     gw1 ws://$GW1_PUBLIC  gw2 ws://$GW2_PUBLIC  gw3 ws://$GW3_PUBLIC
  keys         source $env_file   (HERALD_JWT_SECRET, HERALD_ADMIN_KEY)
  a token      $HERALD_BIN_DIR/herald-gateway token --sub alice --topics news --jwt-hs256-secret "\$HERALD_JWT_SECRET"
EOF
}

# One gateway through a rolling restart: drain and exit, start, ready, and
# back in HAProxy's rotation.
restart_gateway() {
  local gw="$1" t0=$SECONDS
  alive "$gw" herald-gateway || die "$gw is not running"
  # SIGTERM: the node answers /readyz with 503 at once, so HAProxy takes it
  # out of rotation (its next check, within a second) while it drains.
  kill -TERM "$(pid_of "$gw")"
  wait_for 10 "HAProxy to take $gw out of rotation" lb_out "$gw"
  stop_process "$gw" herald-gateway $((DRAIN_TIMEOUT_S + 5))
  local drained=$((SECONDS - t0))
  start_gateway "$gw"
  wait_for 20 "$gw ready" gateway_ready "$gw"
  wait_for 20 "HAProxy to see $gw UP" lb_up "$gw"
  say "$gw restarted: drained and exited in ${drained}s, back in HAProxy after $((SECONDS - t0))s"
}

cmd_roll() {
  load_env
  for gw in "${gateways[@]}"; do restart_gateway "$gw"; done
}

cmd_restart() {
  load_env
  case "${1:-}" in
    gw1 | gw2 | gw3) restart_gateway "$1" ;;
    *) die "restart takes gw1, gw2 or gw3" ;;
  esac
}

cmd_status() {
  load_env
  for name in redis "${gateways[@]}" admin haproxy prometheus; do
    if alive "$name" "$(program_of "$name")"; then echo "$name: running (pid $(pid_of "$name"))"; else echo "$name: stopped"; fi
  done
  if alive haproxy haproxy; then
    for gw in "${gateways[@]}"; do echo "HAProxy sees $gw: $(lb_state "$gw")"; done
  fi
}

cmd_stop() {
  [ -r "$env_file" ] || { say "nothing to stop in $dir"; return 0; }
  load_env
  stop_process haproxy haproxy 10
  stop_process prometheus prometheus 10
  # All gateways drain at once; then each is waited for.
  for gw in "${gateways[@]}"; do
    if alive "$gw" herald-gateway; then kill -TERM "$(pid_of "$gw")" 2>/dev/null || true; fi
  done
  for gw in "${gateways[@]}"; do stop_process "$gw" herald-gateway $((DRAIN_TIMEOUT_S + 5)); done
  stop_process admin herald-admin $((DRAIN_TIMEOUT_S + 5))
  stop_process redis redis-server 10
  say "stopped (logs kept in $dir/logs)"
}

case "${1:-}" in
  start) cmd_start ;;
  roll) cmd_roll ;;
  restart) cmd_restart "${2:-}" ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
