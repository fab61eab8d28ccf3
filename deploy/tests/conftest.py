"""Shared helpers of the deploy tests (pytest, run by scripts/test-deploy.sh).

The Herald binaries come from HERALD_BIN_DIR (default: target/debug of the
repository, as `cargo build --workspace --bins` leaves them). The chart is
rendered through Helm's own Go SDK (pip: helm-python-sdk).
"""

import os
import shutil
import socket
import subprocess
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = ROOT / "helm" / "herald"


def bin_dir() -> Path:
    return Path(os.environ.get("HERALD_BIN_DIR", ROOT / "target" / "debug")).resolve()


def tool(name: str) -> str:
    """A command from PATH, or from this Python's scripts directory, where
    pip puts the tools scripts/deps.sh installs (hadolint, yamllint)."""
    found = shutil.which(name) or shutil.which(name, path=sysconfig.get_path("scripts"))
    if not found:
        pytest.fail(f"{name} not found: run scripts/deps.sh")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(what: str, check, seconds: float, every: float = 0.1):
    """Poll `check` until it returns a truthy value (returned); fail after `seconds`."""
    deadline = time.monotonic() + seconds
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported if the wait times out
            last_error = e
        time.sleep(every)
    pytest.fail(f"timed out after {seconds}s waiting for {what} (last error: {last_error})")


@pytest.fixture(scope="session")
def herald_bin() -> Path:
    path = bin_dir()
    for name in ("herald-gateway", "herald-admin"):
        if not (path / name).is_file():
            pytest.fail(f"{path / name} not found: cargo build --workspace --bins, or set HERALD_BIN_DIR")
    return path


@pytest.fixture(scope="session")
def live_metrics(herald_bin, tmp_path_factory) -> str:
    """The /metrics text of a freshly started single node (memory broker)."""
    public, admin = free_port(), free_port()
    log = tmp_path_factory.mktemp("node") / "gateway.log"
    with open(log, "wb") as out:
        node = subprocess.Popen(
            [herald_bin / "herald-gateway", "--listen", f"127.0.0.1:{public}",
             "--admin-listen", f"127.0.0.1:{admin}", "--jwt-hs256-secret", "0123456789abcdef0123",
             "--admin-api-keys", "k", "--drain-timeout", "1s", "--log-level", "warn"],
            stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
        try:
            wait_until("the node to be ready", lambda: http_get(f"http://127.0.0.1:{admin}/readyz")[0] == 200, 20)
            # One admin request, so the per-route families have a series.
            stats = urllib.request.Request(f"http://127.0.0.1:{admin}/v1/stats", headers={"Authorization": "Bearer k"})
            with urllib.request.urlopen(stats, timeout=5) as resp:
                assert resp.status == 200
            status, body = http_get(f"http://127.0.0.1:{admin}/metrics")
            assert status == 200
            return body.decode()
        finally:
            node.terminate()
            node.wait(timeout=10)


@pytest.fixture(scope="module")
def chart():
    """The chart helm/herald, loaded once per test module."""
    import helm_python as helm

    with helm.Chart.load(CHART) as c:
        yield c


def render(chart, values, name: str = "herald", namespace: str = "herald") -> list[dict]:
    """Every object the chart renders for `values`."""
    out = chart.render(values, name=name, namespace=namespace, is_install=True)
    objects = []
    for template, text in out.items():
        if template.endswith("NOTES.txt"):
            continue
        objects += [o for o in yaml.safe_load_all(text) if o]
    return objects


def by_kind(objects, kind) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}
