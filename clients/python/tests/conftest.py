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


class Node:
    """A herald-gateway process on free loopback ports."""

    def __init__(self, *args: str, public: int = 0, admin: int = 0) -> None:
        binary = Path(os.environ.get("HERALD_BIN_DIR", ROOT / "target" / "debug")) / "herald-gateway"
        public, admin = public or free_port(), admin or free_port()
        self.ports = (public, admin)
        self.proc = subprocess.Popen(
            [
                str(binary),
                "--jwt-hs256-secret", SECRET,
                "--admin-api-keys", ADMIN_KEY,
                "--listen", f"127.0.0.1:{public}",
                "--admin-listen", f"127.0.0.1:{admin}",
                "--log-level", "warn",
                *args,
            ],
            stdout=subprocess.DEVNULL,
        )
        self.admin = f"http://127.0.0.1:{admin}"
        self.ws = f"ws://127.0.0.1:{public}/ws"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{self.admin}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not become ready"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)


class Redis:
    """A redis-server without persistence on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "redis did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Tuple[str, str]]:
    """(admin URL, WebSocket URL) of a single node."""
    node = Node()
    try:
        yield node.admin, node.ws
    finally:
        node.stop()
