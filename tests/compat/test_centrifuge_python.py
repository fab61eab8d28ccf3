"""Centrifugo's Python SDK (PyPI ``centrifuge-python`` 0.7, unchanged)
against Herald's Centrifugo-compatible endpoint (contract §10.7), in JSON
and Protobuf: connect, subscribe, the admin API's publications with their
offsets, client publish, history, presence stats, and recovery after a
reconnect with the missed publications in order (a quiet topic too).

Run by scripts/test-python.sh against this checkout's herald-gateway
(target/debug, or $HERALD_BIN_DIR)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, List, Tuple

import httpx
import jwt
import pytest
from centrifuge import (
    Client,
    PublicationContext,
    SubscribedContext,
    SubscriptionEventHandler,
)

SECRET = "compat-python-secret-0123456789abcdef"
ADMIN_KEY = "compat-python-admin-key"
ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def gateway() -> Iterator[Tuple[str, str]]:
    """(admin URL, /connection/websocket URL) of a node with compat.centrifugo."""
    binary = Path(os.environ.get("HERALD_BIN_DIR", ROOT / "target" / "debug")) / "herald-gateway"
    public, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(binary),
            "--jwt-hs256-secret", SECRET,
            "--admin-api-keys", ADMIN_KEY,
            "--listen", f"127.0.0.1:{public}",
            "--admin-listen", f"127.0.0.1:{admin}",
            "--compat-centrifugo", "true",
            "--presence-topics", "room.>",
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
        yield url, f"ws://127.0.0.1:{public}/connection/websocket"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def token(sub: str) -> str:
    now = int(time.time())
    claims = {
        "sub": sub,
        "iat": now,
        "exp": now + 3600,
        "topics": ["news.>", "quiet.>", "chat.>", "room.>"],
        "publish": ["chat.>"],
        "presence": ["room.>"],
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


def publish(admin: str, topic: str, data: Any) -> str:
    r = httpx.post(
        f"{admin}/v1/publish",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        json={"topic": topic, "data": data},
        timeout=WAIT,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["results"][0]["id"])


class Recorder(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.publications: List[PublicationContext] = []
        self.subscribed: List[SubscribedContext] = []

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.publications.append(ctx)

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.append(ctx)


async def until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.02)


def decoded(protobuf: bool, data: Any) -> Any:
    """Protobuf hands data over as bytes; JSON as the value."""
    return json.loads(data) if protobuf else data


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
def test_the_core_path(gateway: Tuple[str, str], protobuf: bool) -> None:
    admin, url = gateway
    kind = "protobuf" if protobuf else "json"

    async def test() -> None:
        client = Client(url, token=token(f"py-{kind}"), use_protobuf=protobuf)
        await client.connect()
        await client.ready(timeout=WAIT)
        news = Recorder()
        sub = client.new_subscription(f"news.{kind}", events=news)
        await sub.subscribe()
        await sub.ready(timeout=WAIT)
        ctx = news.subscribed[0]
        assert ctx.recoverable and ctx.positioned and ctx.stream_position is not None
        epoch = ctx.stream_position.epoch

        published = publish(admin, f"news.{kind}", {"n": 1})
        await until("the publication", lambda: len(news.publications) == 1)
        pub = news.publications[0].pub
        assert decoded(protobuf, pub.data) == {"n": 1}
        assert f"{epoch}-{pub.offset}" == published, "offset and epoch are the Herald id"

        chat = Recorder()
        chat_sub = client.new_subscription(f"chat.{kind}", events=chat)
        await chat_sub.subscribe()
        await chat_sub.ready(timeout=WAIT)
        said = {"said": "hi"}
        await chat_sub.publish(json.dumps(said).encode() if protobuf else said)
        await until("its own publication", lambda: len(chat.publications) == 1)
        assert decoded(protobuf, chat.publications[0].pub.data) == said
        history = await chat_sub.history(limit=10)
        assert [decoded(protobuf, p.data) for p in history.publications] == [said]

        room = client.new_subscription(f"room.{kind}")
        await room.subscribe()
        await room.ready(timeout=WAIT)
        stats = await room.presence_stats()
        assert (stats.num_clients, stats.num_users) == (1, 1)
        presence = await room.presence()
        assert [c.user for c in presence.clients.values()] == [f"py-{kind}"]
        await client.disconnect()

    run(test)


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
def test_recovery_after_a_reconnect(gateway: Tuple[str, str], protobuf: bool) -> None:
    admin, url = gateway
    kind = "protobuf" if protobuf else "json"

    async def test() -> None:
        client = Client(url, token=token(f"rec-{kind}"), use_protobuf=protobuf)
        await client.connect()
        busy, quiet = Recorder(), Recorder()
        busy_sub = client.new_subscription(f"news.rec.{kind}", events=busy)
        quiet_sub = client.new_subscription(f"quiet.{kind}", events=quiet)
        for s in (busy_sub, quiet_sub):
            await s.subscribe()
            await s.ready(timeout=WAIT)
        publish(admin, f"news.rec.{kind}", 1)
        await until("the first publication", lambda: len(busy.publications) == 1)

        await client.disconnect()
        for n in (2, 3, 4):
            publish(admin, f"news.rec.{kind}", n)
        publish(admin, f"quiet.{kind}", "while away")
        await client.connect()
        await until("resubscribed", lambda: len(busy.subscribed) == 2 and len(quiet.subscribed) == 2)
        for r in (busy, quiet):
            assert r.subscribed[1].was_recovering and r.subscribed[1].recovered
        await until("the missed ones", lambda: len(busy.publications) == 4 and len(quiet.publications) == 1)
        assert [decoded(protobuf, p.pub.data) for p in busy.publications] == [1, 2, 3, 4]
        assert decoded(protobuf, quiet.publications[0].pub.data) == "while away"
        await client.disconnect()

    run(test)
