"""`Subscriber`: one WebSocket to a Herald gateway, kept alive across node
loss, deploys and token expiry, delivering every event of its topics once
and in order (contract §5, §10).

Invariants, each kept in one place:
- Every wanted topic is subscribed again on every `welcome`, with `since` =
  its position (the last id received, or the `positions[topic]` of its last
  `subscribed`), so events published while disconnected arrive in order
  before live ones, on topics that were quiet too (`_subscribe_frame`).
- An event whose id is not after the topic's position is dropped, so none
  is delivered twice (`_accept`).
- The token goes in the first frame (`connect`, contract §10.4); nothing
  else is sent before `welcome`.
- A reconnect waits as the close code says (`close_action`, the table of
  docs/protocol.md, the same as the TypeScript SDK's): `stop` ends the
  subscriber with a `HeraldError`; a protocol fault is retried at most
  `max_faults` times in a row; a refused token is replaced first.
- No frame for twice `heartbeat_ms` means a dead path: the socket is
  dropped and another opened.

The wire protocol is docs/protocol.md; the API is this package's README.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import random
from dataclasses import dataclass, field
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import websockets

from .errors import HeraldError

TokenSource = Union[str, Callable[[], str], Callable[[], Awaitable[str]]]

#: What a close code asks of the client (docs/protocol.md, Close codes).
_CLOSE_ACTIONS: Dict[int, str] = {
    1000: "stop",
    4003: "stop",
    1012: "now",
    4001: "refresh",
    1002: "fault",
    1003: "fault",
    1007: "fault",
    1008: "fault",
    1009: "fault",
}

#: 4005's reason is the refusal's code: a refused token is replaced first.
_REFUSALS: Dict[str, str] = {
    "unauthorized": "refresh",
    "token_expired": "refresh",
    "too_many_connections": "backoff",
    "unavailable": "backoff",
}


def close_action(code: int, reason: str = "") -> str:
    """`stop`, reconnect `now`, after `backoff`, after a fresh token
    (`refresh`), or after backoff at most `max_faults` times (`fault`)."""
    if code == 4005:
        return _REFUSALS.get(reason, "stop")
    return _CLOSE_ACTIONS.get(code, "backoff")


def handshake_action(status: int) -> str:
    """What a refused handshake (an HTTP status) asks of the client."""
    if status == 401:
        return "refresh"
    if status == 403:
        return "stop"
    if status in (400, 426):
        return "fault"
    return "backoff"


def _position(event_id: str) -> Optional[Tuple[int, int]]:
    """`(epoch, seq)` of a Herald id, for ordering within a topic."""
    epoch, _, seq = event_id.partition("-")
    try:
        return int(epoch, 16), int(seq)
    except ValueError:
        return None


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff between reconnect attempts (seconds)."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2.0**attempt))


@dataclass(frozen=True)
class Message:
    """One event: `data` is the JSON value, or `bytes` for a byte payload."""

    topic: str
    id: str
    data: Any
    event: Optional[str] = None
    ts: int = 0


@dataclass
class _State:
    positions: Dict[str, str] = field(default_factory=dict)
    recovered: Dict[str, bool] = field(default_factory=dict)


class Subscriber:
    """Subscribes to topics and yields their events, across reconnects.

    ``urls``: one gateway URL (``ws://host:8080/ws``) or several, tried in
    turn (a list of nodes, when no load balancer is in front of them).
    ``token``: a JWT, or a function (sync or async) returning a fresh one,
    called before each connection and when the server says the token is
    about to expire (`token_expiring`): give a function for sessions that
    outlive a token. ``protocol``: ``"json"`` or ``"msgpack"`` (needs the
    ``msgpack`` package: ``pip install herald-client[msgpack]``).

    Use it as an async context manager and iterate over it; ``positions``
    holds each topic's position (a valid ``since`` to start from later),
    ``recovered`` whether the last resubscribe replayed everything missed
    (``False``: events were lost beyond the history window; reload state).
    """

    def __init__(
        self,
        urls: Union[str, Sequence[str]],
        token: TokenSource,
        *,
        protocol: str = "json",
        backoff: Backoff = Backoff(),
        max_faults: int = 5,
        queue_size: int = 10_000,
    ) -> None:
        self._urls = [urls] if isinstance(urls, str) else list(urls)
        if not self._urls:
            raise ValueError("at least one URL")
        if protocol not in ("json", "msgpack"):
            raise ValueError("protocol is 'json' or 'msgpack'")
        if protocol == "msgpack":
            import msgpack  # noqa: F401  (fail early when it is missing)
        self._token_source = token
        self._protocol = protocol
        self._backoff = backoff
        self._max_faults = max_faults
        self._wanted: Dict[str, Optional[str]] = {}
        self._state = _State()
        self._queue: "asyncio.Queue[Union[Message, HeraldError]]" = asyncio.Queue(queue_size)
        self._task: Optional["asyncio.Task[None]"] = None
        self._ws: Optional[Any] = None
        self._closing = False
        self._refs = 0
        self._welcomed = False
        self._refreshed = float("-inf")
        #: Sessions opened so far (each reconnect adds one).
        self.connections = 0
        #: Refusals of subscribe requests, newest last (``HeraldError``).
        self.errors: List[HeraldError] = []

    # -- the public surface -------------------------------------------------

    @property
    def positions(self) -> Dict[str, str]:
        """Each topic's position: the last id received, or where it stood."""
        return dict(self._state.positions)

    @property
    def recovered(self) -> Dict[str, bool]:
        """Per topic resubscribed with ``since``: whether nothing was missed."""
        return dict(self._state.recovered)

    def subscribe(self, *topics: str, since: Optional[Dict[str, str]] = None) -> None:
        """Adds topics (``since``: where to start each, e.g. saved
        ``positions`` of an earlier run); subscribed now if connected."""
        for t in topics:
            start = (since or {}).get(t)
            self._wanted[t] = start
            if start is not None:
                self._state.positions.setdefault(t, start)
        if self._ws is not None:
            asyncio.ensure_future(self._send(self._subscribe_frame(list(topics))))

    async def start(self) -> None:
        """Connects in the background (``async with`` does it for you)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Closes the connection; the iteration ends."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def __aenter__(self) -> "Subscriber":
        await self.start()
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            item = await self._queue.get()
            if isinstance(item, HeraldError):
                raise item
            yield item

    # -- the connection -----------------------------------------------------

    async def _token(self) -> str:
        source = self._token_source
        if isinstance(source, str):
            return source
        value = source()
        if inspect.isawaitable(value):
            value = await value
        return str(value)

    def _encode(self, frame: Dict[str, Any]) -> Union[str, bytes]:
        if self._protocol == "msgpack":
            import msgpack

            return bytes(msgpack.packb(frame, use_bin_type=True))
        return json.dumps(frame, separators=(",", ":"))

    def _decode(self, raw: Union[str, bytes]) -> Dict[str, Any]:
        if self._protocol == "msgpack":
            import msgpack

            value = msgpack.unpackb(raw, raw=False)
        else:
            value = json.loads(raw)
        return value if isinstance(value, dict) else {}

    async def _send(self, frame: Dict[str, Any]) -> None:
        ws = self._ws
        if ws is not None:
            try:
                await ws.send(self._encode(frame))
            except websockets.ConnectionClosed:
                pass

    def _subscribe_frame(self, topics: List[str]) -> Dict[str, Any]:
        self._refs += 1
        frame: Dict[str, Any] = {"type": "subscribe", "ref": f"s{self._refs}", "topics": topics}
        since = {t: self._state.positions[t] for t in topics if t in self._state.positions}
        if since:
            frame["since"] = since
        return frame

    def _accept(self, topic: str, event_id: str) -> bool:
        """Whether an event is new for its topic; moves the position."""
        seen = self._state.positions.get(topic)
        new, old = _position(event_id), _position(seen) if seen else None
        if new is not None and old is not None and new[0] == old[0] and new[1] <= old[1]:
            return False
        self._state.positions[topic] = event_id
        return True

    async def _run(self) -> None:
        attempt, faults, turn = 0, 0, 0
        while not self._closing:
            url = self._urls[turn % len(self._urls)]
            turn += 1
            action, retry_after = "backoff", None
            try:
                token = await self._token()
                action = await self._session(url, token)
                if self._welcomed:
                    attempt = 0
                    faults = faults if action == "fault" else 0
            except websockets.InvalidStatus as e:
                action = handshake_action(e.response.status_code)
                value = e.response.headers.get("Retry-After")
                retry_after = float(value) if value and value.isdigit() else None
            except (OSError, asyncio.TimeoutError, websockets.WebSocketException):
                action = "backoff"
            if self._closing:
                return
            if action == "stop":
                await self._queue.put(HeraldError("disconnected", "the gateway ended the session"))
                return
            if action == "fault":
                faults += 1
                if faults > self._max_faults:
                    await self._queue.put(HeraldError("protocol_fault", "refused repeatedly"))
                    return
            delay = 0.05 if action in ("now", "refresh") else self._backoff.delay(attempt)
            if retry_after is not None:
                delay = max(delay, retry_after)
            attempt += 1
            await asyncio.sleep(delay)

    async def _session(self, url: str, token: str) -> str:
        """One connection, from the handshake to its close; returns the
        close's action."""
        subprotocol = f"herald.v2.{self._protocol}"
        async with websockets.connect(
            url, subprotocols=[subprotocol], max_size=None, open_timeout=10, close_timeout=2  # type: ignore[list-item]
        ) as ws:
            self._ws = ws
            self._welcomed = False
            try:
                await ws.send(self._encode({"type": "connect", "token": token}))
                welcome = self._decode(await asyncio.wait_for(ws.recv(), 10))
                if welcome.get("type") != "welcome":
                    return "fault"
                self._welcomed = True
                self.connections += 1
                silence = max(float(welcome.get("heartbeat_ms", 25_000)) / 1000.0, 1.0) * 2
                if self._wanted:
                    await ws.send(self._encode(self._subscribe_frame(list(self._wanted))))
                while True:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), silence)
                    except asyncio.TimeoutError:
                        return "now"  # a dead path: another socket
                    await self._on_frame(self._decode(raw))
            except websockets.ConnectionClosed as e:
                close = e.rcvd
                return close_action(close.code, close.reason) if close else "backoff"
            finally:
                self._ws = None

    async def _on_frame(self, frame: Dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message":
            topic, event_id = str(frame.get("topic")), str(frame.get("id"))
            if not self._accept(topic, event_id):
                return
            data = frame.get("data")
            if "data_b64" in frame:
                data = base64.b64decode(frame["data_b64"])
            await self._queue.put(
                Message(topic, event_id, data, frame.get("event"), int(frame.get("ts", 0)))
            )
        elif kind == "subscribed":
            for topic, at in (frame.get("positions") or {}).items():
                # Where the topic stands: never behind an id already given.
                self._accept(str(topic), str(at))
            for topic, ok in (frame.get("recovered") or {}).items():
                self._state.recovered[str(topic)] = bool(ok)
        elif kind == "error" and str(frame.get("ref", "")).startswith("s"):
            error = HeraldError(str(frame.get("code")), str(frame.get("message", "")))
            self.errors.append(error)
            if error.retryable:
                # The broker is briefly unavailable: the same request again
                # in a second (topics already held are not disturbed).
                frame = self._subscribe_frame(list(self._wanted))
                loop = asyncio.get_running_loop()
                loop.call_later(1.0, lambda: asyncio.ensure_future(self._send(frame)))
            else:
                await self._queue.put(error)
        elif kind == "token_expiring" and not isinstance(self._token_source, str):
            # A fresh token that is itself inside the warning window is
            # announced again at once: at most one refresh a second.
            now = asyncio.get_running_loop().time()
            if now - self._refreshed < 1.0:
                return
            self._refreshed = now
            fresh = await self._token()
            await self._send({"type": "auth", "ref": "auth", "token": fresh})
