#!/usr/bin/env bash
# Installs what the test suite needs and the machine lacks: redis-server and
# redis-cli (the Redis tests start their own servers), promtool (checks the
# /metrics output), python3 + kosoku (the Autobahn WebSocket conformance
# cases), Chromium + playwright-core (the browser test), and cargo-nextest.
# Safe to run repeatedly: it installs nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: please install $* (no apt-get here)" >&2
    return 1
  fi
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

command -v redis-server >/dev/null 2>&1 || apt_install redis-server
command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
command -v promtool >/dev/null 2>&1 || apt_install prometheus

command -v curl >/dev/null 2>&1 || apt_install curl
# The browser test: Debian's Chromium, driven by playwright-core from npm.
[ -x /usr/bin/chromium ] || apt_install chromium
command -v node >/dev/null 2>&1 || apt_install nodejs npm
[ -d tests/browser/node_modules/playwright-core ] ||
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip
python3 -c 'import kosoku' >/dev/null 2>&1 ||
  python3 -m pip install --quiet kosoku ||
  python3 -m pip install --quiet --break-system-packages kosoku

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo nextest --version >/dev/null 2>&1 || cargo install cargo-nextest --locked
# The client tests (scripts/test-clients.sh): HAProxy balances two gateways
# in the browser failover test.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || apt_install haproxy
