"""A real herald-gateway process (this checkout's debug build) per test module."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Tuple

import httpx
import pytest

SECRET = "python-client-secret-0123456789abcdef"
ADMIN_KEY = "python-admin-key"
ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def gateway() -> Iterator[Tuple[str, str]]:
    """(admin URL, WebSocket URL) of a single node."""
    binary = Path(os.environ.get("HERALD_BIN_DIR", ROOT / "target" / "debug")) / "herald-gateway"
    public, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(binary),
            "--jwt-hs256-secret", SECRET,
            "--admin-api-keys", ADMIN_KEY,
            "--listen", f"127.0.0.1:{public}",
            "--admin-listen", f"127.0.0.1:{admin}",
            "--log-level", "warn",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{admin}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the gateway did not become ready"
        time.sleep(0.1)
    try:
        yield url, f"ws://127.0.0.1:{public}/ws"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
