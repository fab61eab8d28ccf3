"""The publishers and the token builder against a real gateway; the retry
rules against a scripted server."""

from __future__ import annotations

import asyncio
import json
import time
from typing import List, Tuple

import httpx
import pytest
import websockets

from herald_client import AsyncPublisher, HeraldError, Publisher, RetryPolicy, TokenBuilder

from conftest import ADMIN_KEY, SECRET, ROOT


def test_the_readme_example_runs(gateway: Tuple[str, str]) -> None:
    admin, _ = gateway
    readme = (ROOT / "clients" / "python" / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("http://127.0.0.1:8081", admin).replace("admin-key", ADMIN_KEY)
    exec(compile(code, "README.md", "exec"), {})


def test_publish_history_and_a_key_retried_is_published_once(gateway: Tuple[str, str]) -> None:
    admin, _ = gateway
    with Publisher(admin, ADMIN_KEY) as herald:
        first = herald.publish("py.once", {"n": 1}, idempotency_key="order-17")
        again = herald.publish("py.once", {"n": 1}, idempotency_key="order-17")
        assert first == again
        ids = herald.publish_batch([("py.once", {"n": 2}), ("py.other", {"n": 3})])
        assert len(ids) == 2
        events = herald.history("py.once")["messages"]
        assert [e["data"]["n"] for e in events] == [1, 2]
        assert "nodes" in herald.stats()


def test_refusals_are_typed_and_not_retried(gateway: Tuple[str, str]) -> None:
    admin, _ = gateway
    with Publisher(admin, "wrong-key") as herald:
        started = time.monotonic()
        with pytest.raises(HeraldError) as e:
            herald.publish("news", {})
        assert (e.value.code, e.value.status) == ("unauthorized", 401)
        assert time.monotonic() - started < 1, "a 401 is not retried"
    with Publisher(admin, ADMIN_KEY) as herald:
        with pytest.raises(HeraldError) as e:
            herald.publish("bad topic!", {})
        assert e.value.code == "invalid_topic" and e.value.status == 400


def test_async_publisher(gateway: Tuple[str, str]) -> None:
    admin, _ = gateway

    async def run() -> List[str]:
        async with AsyncPublisher(admin, ADMIN_KEY) as herald:
            await herald.publish("py.async", {"n": 1})
            page = await herald.history("py.async")
            return [str(e["id"]) for e in page["messages"]]

    assert len(asyncio.run(run())) == 1


def test_tokens_are_accepted_by_the_gateway(gateway: Tuple[str, str]) -> None:
    admin, ws_url = gateway
    token = TokenBuilder("alice").topics("py.live").jti().sign_hs256(SECRET)

    async def run() -> Tuple[dict, dict]:  # type: ignore[type-arg]
        async with websockets.connect(f"{ws_url}?token={token}") as ws:
            welcome = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "subscribe", "ref": "1", "topics": ["py.live"]}))
            subscribed = json.loads(await ws.recv())
            return welcome, subscribed

    welcome, subscribed = asyncio.run(run())
    assert welcome["type"] == "welcome"
    assert subscribed["type"] == "subscribed", subscribed
    forged = TokenBuilder("mallory").topics(">").sign_hs256("another-secret-0123456789abcdef-xyz")
    with pytest.raises(Exception):
        asyncio.run(websockets.connect(f"{ws_url}?token={forged}").__aenter__())


def test_503_is_retried_after_retry_after_with_the_same_key() -> None:
    seen: List[dict] = []  # type: ignore[type-arg]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        if len(seen) < 3:
            return httpx.Response(
                503,
                headers={"retry-after": "0.2"},
                json={"error": {"code": "unavailable", "message": "shedding"}},
            )
        return httpx.Response(200, json={"results": [{"id": "0000000a-1", "topic": "news"}]})

    with Publisher("http://herald", "k", transport=httpx.MockTransport(handler)) as herald:
        started = time.monotonic()
        assert herald.publish("news", {"x": 1}) == "0000000a-1"
        assert time.monotonic() - started >= 0.4, "waited Retry-After twice"
    assert len(seen) == 3
    assert len({s["idempotency_key"] for s in seen}) == 1, "one key for every attempt"

    def always_503(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"code": "unavailable", "message": "down"}})

    policy = RetryPolicy(attempts=2, base=0.01, cap=0.01)
    with Publisher("http://herald", "k", retry=policy, transport=httpx.MockTransport(always_503)) as herald:
        with pytest.raises(HeraldError) as e:
            herald.publish("news", {})
        assert e.value.code == "unavailable" and e.value.retryable
