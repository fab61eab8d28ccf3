"""The admin API client: one request shape, retried the same way for the
blocking `Publisher` and the asyncio `AsyncPublisher`.

Retries: a 503 or a request that got no answer is sent again, unchanged
(same `idempotency_key`), after the server's `Retry-After` or an
exponential backoff with jitter, at most `RetryPolicy.attempts` times in
all. Any other refusal raises at once: retrying a 400 or a 401 cannot help.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import httpx

from .errors import HeraldError

Json = Any


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a request the gateway could not take."""

    attempts: int = 5
    base: float = 0.2
    cap: float = 10.0

    def delay(self, attempt: int, retry_after: Optional[float]) -> float:
        """Seconds to wait before attempt `attempt + 1`."""
        if retry_after is not None:
            return float(min(retry_after, self.cap))
        ceiling = min(self.cap, self.base * 2.0**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    body: Optional[Json] = None
    params: Optional[Dict[str, Any]] = None


def _publication(
    topic: str, data: Json, event: Optional[str], idempotency_key: Optional[str]
) -> Dict[str, Json]:
    # Bytes travel as bytes (contract §10.2): `data_b64` on the wire.
    body: Dict[str, Json] = (
        {"topic": topic, "data_b64": base64.b64encode(bytes(data)).decode()}
        if isinstance(data, (bytes, bytearray))
        else {"topic": topic, "data": data}
    )
    if event is not None:
        body["event"] = event
    body["idempotency_key"] = idempotency_key or uuid.uuid4().hex
    return body


def _retry_after(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _answer(response: httpx.Response) -> Json:
    """The JSON body of a 2xx, or the typed error of anything else."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success:
        return body
    error = body.get("error", {}) if isinstance(body, dict) else {}
    raise HeraldError(
        str(error.get("code", f"http_{response.status_code}")),
        str(error.get("message", response.reason_phrase)),
        response.status_code,
        _retry_after(response),
        body,
    )


class _Routes:
    """The admin routes as requests; shared by both publishers."""

    @staticmethod
    def publish(topic: str, data: Json, event: Optional[str], key: Optional[str]) -> _Request:
        return _Request("POST", "/v1/publish", _publication(topic, data, event, key))

    @staticmethod
    def publish_batch(messages: Sequence[Tuple[str, Json]]) -> _Request:
        batch = [_publication(t, d, None, None) for t, d in messages]
        return _Request("POST", "/v1/publish/batch", {"messages": batch})

    @staticmethod
    def history(topic: str, since: Optional[str], limit: Optional[int]) -> _Request:
        params: Dict[str, Any] = {}
        if since is not None:
            params["since"] = since
        if limit is not None:
            params["limit"] = limit
        return _Request("GET", f"/v1/topics/{topic}/history", params=params)

    @staticmethod
    def presence(topic: str, limit: Optional[int], cursor: Optional[str]) -> _Request:
        params: Dict[str, Any] = {}
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        return _Request("GET", f"/v1/topics/{topic}/presence", params=params)

    @staticmethod
    def disconnect(sub: str) -> _Request:
        return _Request("POST", "/v1/disconnect", {"sub": sub})

    @staticmethod
    def revoke(jti: Optional[str], sub: Optional[str], issued_before: Optional[int]) -> _Request:
        body: Dict[str, Json] = {}
        if jti is not None:
            body["jti"] = jti
        if sub is not None:
            body["sub"] = sub
        if issued_before is not None:
            body["issued_before"] = issued_before
        return _Request("POST", "/v1/revoke", body)


def _wait_or_raise(policy: RetryPolicy, attempt: int, error: HeraldError) -> float:
    """The wait before retrying after `error` on attempt `attempt` (from
    0), or raises it when retrying cannot help or the attempts are spent."""
    if not error.retryable or attempt + 1 >= policy.attempts:
        raise error
    return policy.delay(attempt, error.retry_after)


def _headers(api_key: str) -> Dict[str, str]:
    return {"authorization": f"Bearer {api_key}", "accept": "application/json"}


class Publisher:
    """Blocking admin API client. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=url, headers=_headers(api_key), timeout=timeout, transport=transport
        )
        self._retry = retry

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, request: _Request) -> Json:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    request.method, request.path, json=request.body, params=request.params
                )
                return _answer(response)
            except httpx.TransportError as e:
                error = HeraldError("unreachable", str(e))
            except HeraldError as e:
                error = e
            time.sleep(_wait_or_raise(self._retry, attempt, error))
            attempt += 1

    def publish(
        self, topic: str, data: Json, *, event: Optional[str] = None, idempotency_key: Optional[str] = None
    ) -> str:
        """Publishes `data` to `topic`; returns the event's id."""
        answer = self._send(_Routes.publish(topic, data, event, idempotency_key))
        return str(answer["results"][0]["id"])

    def publish_batch(self, messages: Sequence[Tuple[str, Json]]) -> List[str]:
        """Publishes (topic, data) pairs in one call; returns their ids."""
        answer = self._send(_Routes.publish_batch(messages))
        return [str(r["id"]) for r in answer["results"]]

    def history(self, topic: str, *, since: Optional[str] = None, limit: Optional[int] = None) -> Json:
        """`{"messages": [...], "recovered": bool}` of `topic` after `since`."""
        return self._send(_Routes.history(topic, since, limit))

    def presence(self, topic: str, *, limit: Optional[int] = None, cursor: Optional[str] = None) -> Json:
        """A page of `topic`'s members."""
        return self._send(_Routes.presence(topic, limit, cursor))

    def disconnect(self, sub: str) -> int:
        """Closes every session of `sub`; returns how many closed."""
        return int(self._send(_Routes.disconnect(sub))["disconnected"])

    def revoke(
        self, *, jti: Optional[str] = None, sub: Optional[str] = None, issued_before: Optional[int] = None
    ) -> Json:
        """Revokes a token by `jti`, or `sub`'s tokens issued before a time."""
        return self._send(_Routes.revoke(jti, sub, issued_before))

    def stats(self) -> Json:
        """Every node's counts."""
        return self._send(_Request("GET", "/v1/stats"))


class AsyncPublisher:
    """asyncio admin API client. Use `async with`, or await `close()`."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=url, headers=_headers(api_key), timeout=timeout, transport=transport
        )
        self._retry = retry

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, request: _Request) -> Json:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    request.method, request.path, json=request.body, params=request.params
                )
                return _answer(response)
            except httpx.TransportError as e:
                error = HeraldError("unreachable", str(e))
            except HeraldError as e:
                error = e
            await asyncio.sleep(_wait_or_raise(self._retry, attempt, error))
            attempt += 1

    async def publish(
        self, topic: str, data: Json, *, event: Optional[str] = None, idempotency_key: Optional[str] = None
    ) -> str:
        """Publishes `data` to `topic`; returns the event's id."""
        answer = await self._send(_Routes.publish(topic, data, event, idempotency_key))
        return str(answer["results"][0]["id"])

    async def publish_batch(self, messages: Sequence[Tuple[str, Json]]) -> List[str]:
        """Publishes (topic, data) pairs in one call; returns their ids."""
        answer = await self._send(_Routes.publish_batch(messages))
        return [str(r["id"]) for r in answer["results"]]

    async def history(
        self, topic: str, *, since: Optional[str] = None, limit: Optional[int] = None
    ) -> Json:
        """`{"messages": [...], "recovered": bool}` of `topic` after `since`."""
        return await self._send(_Routes.history(topic, since, limit))

    async def presence(
        self, topic: str, *, limit: Optional[int] = None, cursor: Optional[str] = None
    ) -> Json:
        """A page of `topic`'s members."""
        return await self._send(_Routes.presence(topic, limit, cursor))

    async def disconnect(self, sub: str) -> int:
        """Closes every session of `sub`; returns how many closed."""
        return int((await self._send(_Routes.disconnect(sub)))["disconnected"])

    async def revoke(
        self, *, jti: Optional[str] = None, sub: Optional[str] = None, issued_before: Optional[int] = None
    ) -> Json:
        """Revokes a token by `jti`, or `sub`'s tokens issued before a time."""
        return await self._send(_Routes.revoke(jti, sub, issued_before))

    async def stats(self) -> Json:
        """Every node's counts."""
        return await self._send(_Request("GET", "/v1/stats"))
