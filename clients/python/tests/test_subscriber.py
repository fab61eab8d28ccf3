"""The subscriber (and the publisher and token builder where they meet a
node's restart or a key) against real gateway processes: events in both
encodings, bytes, recovery across a node killed with kill -9 (two nodes on
Redis), token refresh before expiry, a server-side disconnect, Retry-After
of a shed handshake, tokens of every algorithm, a publish retried across a
restart delivered once, and the close-code table."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Awaitable, Callable, List, Tuple

import pytest

from herald_client import (
    Backoff,
    HeraldError,
    Message,
    Publisher,
    RetryPolicy,
    Subscriber,
    TokenBuilder,
    close_action,
)

from conftest import ADMIN_KEY, ROOT, SECRET, Node, Redis

WAIT = 15.0


def token(sub: str = "py-sub", ttl: int = 3600) -> str:
    return (
        TokenBuilder(sub)
        .topics("py.>")
        .expires_in(ttl)
        .sign_hs256(SECRET)
    )


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 90))


async def take(sub: Subscriber, n: int) -> List[Message]:
    got: List[Message] = []
    it = sub.__aiter__()
    while len(got) < n:
        got.append(await asyncio.wait_for(it.__anext__(), WAIT))
    return got


async def until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("protocol", ["json", "msgpack"])
def test_events_and_bytes_in_both_encodings(gateway: Tuple[str, str], protocol: str) -> None:
    admin, ws = gateway
    topic = f"py.enc.{protocol}"

    async def test() -> None:
        async with Subscriber(ws, token(), protocol=protocol) as sub:
            sub.subscribe(topic)
            await until("subscribed", lambda: topic in sub.positions)
            with Publisher(admin, ADMIN_KEY) as herald:
                first = herald.publish(topic, {"n": 1}, event="tick")
                herald.publish(topic, b"\x00\x01\xff")
            got = await take(sub, 2)
            assert (got[0].data, got[0].event, got[0].id) == ({"n": 1}, "tick", first)
            assert got[1].data == b"\x00\x01\xff"
            assert sub.positions[topic] == got[1].id

    run(test)


def test_recovery_across_a_node_killed_with_no_loss_and_no_duplicate() -> None:
    redis = Redis()
    nodes = [Node("--redis-url", redis.url, "--node-id", f"n{i}") for i in (1, 2)]
    topic = "py.ha"
    try:

        async def test() -> None:
            # The first URL is the node that dies; the second takes over.
            async with Subscriber([n.ws for n in nodes], token()) as sub:
                sub.subscribe(topic)
                await until("subscribed", lambda: topic in sub.positions)
                survivor = Publisher(nodes[1].admin, ADMIN_KEY)
                survivor.publish(topic, 1)
                assert [m.data for m in await take(sub, 1)] == [1]
                nodes[0].proc.kill()  # kill -9
                nodes[0].proc.wait(timeout=10)
                survivor.publish(topic, 2)
                survivor.publish(topic, 3)
                await until("reconnected", lambda: sub.connections == 2)
                survivor.publish(topic, 4)
                got = await take(sub, 3)
                assert [m.data for m in got] == [2, 3, 4], "each once, in order"
                # The `subscribed` reply follows the replay (and may follow 4).
                await until("the resubscribe's answer", lambda: topic in sub.recovered)
                assert sub.recovered[topic] is True
                survivor.close()

        run(test)
    finally:
        for n in nodes:
            n.stop()
        redis.stop()


def test_the_token_is_refreshed_before_it_expires() -> None:
    # No leeway: a session still on its first token would end at its exp.
    node = Node("--jwt-leeway", "0s")
    calls: List[float] = []

    def fresh() -> str:
        calls.append(time.monotonic())
        return token(ttl=3 if len(calls) == 1 else 3600)

    try:

        async def test() -> None:
            async with Subscriber(node.ws, fresh) as sub:
                sub.subscribe("py.refresh")
                await until("a refresh", lambda: len(calls) >= 2)
                await asyncio.sleep(3.5)  # past the first token's exp
                with Publisher(node.admin, ADMIN_KEY) as herald:
                    herald.publish("py.refresh", "still here")
                got = await take(sub, 1)
                assert got[0].data == "still here"
                assert sub.connections == 1, "refreshed in place, no reconnect"

        run(test)
    finally:
        node.stop()


def test_a_disconnect_by_the_server_ends_the_iteration(gateway: Tuple[str, str]) -> None:
    admin, ws = gateway

    async def test() -> None:
        async with Subscriber(ws, token("py-gone")) as sub:
            sub.subscribe("py.gone")
            await until("subscribed", lambda: "py.gone" in sub.positions)
            with Publisher(admin, ADMIN_KEY) as herald:
                herald.disconnect("py-gone")
            with pytest.raises(HeraldError) as e:
                await take(sub, 1)
            assert e.value.code == "disconnected"

    run(test)


def test_the_close_code_table() -> None:
    assert close_action(1000) == "stop"
    assert close_action(4003) == "stop"
    assert close_action(1012) == "now"
    assert close_action(4001) == "refresh"
    assert close_action(4004) == "backoff"
    assert close_action(1006) == "backoff"
    assert close_action(1008) == "fault"
    assert close_action(4005, "unauthorized") == "refresh"
    assert close_action(4005, "unavailable") == "backoff"
    assert close_action(4005, "forbidden") == "stop"


def test_retry_after_of_a_shed_handshake_is_honoured() -> None:
    """A node at limits.max_connections answers 503 with a Retry-After of
    1-5 s: the subscriber waits that long, not its own 100 ms backoff."""
    node = Node("--limits-max-connections", "1")
    try:

        async def test() -> None:
            async with Subscriber(node.ws, token("py-holder")) as holder:
                holder.subscribe("py.full")
                await until("the slot taken", lambda: holder.connections == 1)
                started = time.monotonic()
                waiting = Subscriber(node.ws, token("py-waiting"), backoff=Backoff(base=0.1, cap=0.1))
                await waiting.start()
                await asyncio.sleep(0.2)
                assert waiting.connections == 0
            # The holder is closed: there is room now.
            await until("connected once there is room", lambda: waiting.connections == 1)
            assert time.monotonic() - started >= 1.0, "waited Retry-After"
            await waiting.close()

        run(test)
    finally:
        node.stop()


@pytest.mark.parametrize(
    "alg,private,public",
    [
        ("RS256", "rsa_private.pem", "rsa_public.pem"),
        ("ES256", "ec_private.pem", "ec_public.pem"),
        ("EdDSA", "ed_private.pem", "ed_public.pem"),
    ],
)
def test_tokens_of_every_algorithm_are_accepted(alg: str, private: str, public: str) -> None:
    fixtures = ROOT / "gateway" / "tests" / "fixtures"
    node = Node("--jwt-public-key-file", str(fixtures / public))
    signed = TokenBuilder("py-alg").topics("py.>").expires_in(600).sign((fixtures / private).read_bytes(), alg)
    try:

        async def test() -> None:
            async with Subscriber(node.ws, signed) as sub:
                sub.subscribe("py.alg")
                await until("subscribed", lambda: "py.alg" in sub.positions)

        run(test)
    finally:
        node.stop()


def test_a_publish_retried_across_a_node_restart_is_delivered_once() -> None:
    redis = Redis()
    node = Node("--redis-url", redis.url)
    public_port, admin_port = node.ports
    try:
        herald = Publisher(node.admin, ADMIN_KEY, retry=RetryPolicy(attempts=30, base=0.1, cap=0.5))
        herald.publish("py.once", 0)
        node.proc.kill()  # kill -9
        node.proc.wait(timeout=10)
        restarted: List[Node] = []


        def restart() -> None:
            time.sleep(0.7)
            restarted.append(Node("--redis-url", redis.url, public=public_port, admin=admin_port))

        t = threading.Thread(target=restart)
        t.start()
        first = herald.publish("py.once", 1, idempotency_key="order-9")
        t.join()
        again = herald.publish("py.once", 1, idempotency_key="order-9")
        assert first == again
        ones = [m for m in herald.history("py.once")["messages"] if m["data"] == 1]
        assert len(ones) == 1, "exactly once"
        herald.close()
        for n in restarted:
            n.stop()
    finally:
        redis.stop()
