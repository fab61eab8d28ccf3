#!/usr/bin/env bash
# The Python client (clients/python): installed with its test extras (from
# PyPI) into a fresh venv (or, where python3 has no venv module, into the
# interpreter as scripts/deps.sh installs tools), type-checked with mypy
# --strict, and its tests run against this checkout's herald-gateway
# (target/debug, or $HERALD_BIN_DIR); Centrifugo's Python SDK
# (centrifuge-python 0.7, tests/compat) against /connection/websocket; then
# the client's wheel, as `python -m build` makes it, installed into another
# fresh venv and imported.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$PWD/target/python-client-venv
rm -rf "$venv"
if python3 -m venv "$venv" >/dev/null 2>&1; then
  py=$venv/bin/python
  "$py" -m pip install --quiet --disable-pip-version-check -e "clients/python[test]"
else
  py=python3
  python3 -m pip install --quiet -e "clients/python[test]" ||
    python3 -m pip install --quiet --break-system-packages -e "clients/python[test]"
fi
cd clients/python
"$py" -m mypy --strict --cache-dir "$venv.mypy" src tests
"$py" -m pytest -q -p no:cacheprovider tests

# Centrifugo's own Python SDK, unchanged, against /connection/websocket
# (contract §10.7), in the same environment.
cd ../..
"$py" -m pip install --quiet --disable-pip-version-check "centrifuge-python==0.7.0" ||
  "$py" -m pip install --quiet --break-system-packages "centrifuge-python==0.7.0"
"$py" -m pytest -q -p no:cacheprovider tests/compat
cd clients/python

# The wheel a user would install.
cd ../..
"$py" -m pip install --quiet --disable-pip-version-check build ||
  "$py" -m pip install --quiet --break-system-packages build
rm -rf target/python-client-dist
"$py" -m build --wheel --outdir target/python-client-dist clients/python > /dev/null
wheel=$(ls target/python-client-dist/herald_client-*.whl)
if python3 -m venv "$venv-wheel" >/dev/null 2>&1; then
  "$venv-wheel/bin/pip" install --quiet --disable-pip-version-check "$wheel"
  "$venv-wheel/bin/python" -c 'import herald_client as h; assert h.__version__ and h.Publisher and h.Subscriber and h.TokenBuilder; print("wheel", h.__version__, "installs and imports")'
fi
