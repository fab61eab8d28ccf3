#!/usr/bin/env bash
# The Python client (clients/python): installed with its test extras (from
# PyPI) into a fresh venv (or, where python3 has no venv module, into the
# interpreter as scripts/deps.sh installs tools), type-checked with mypy
# --strict, and its tests run against this checkout's herald-gateway
# (target/debug, or $HERALD_BIN_DIR).
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
