"""Errors of the admin API, typed by the contract's error code."""

from __future__ import annotations

from typing import Any, Optional


class HeraldError(Exception):
    """A request the gateway refused, or one that never got an answer.

    `code` is the contract's error code (`unauthorized`, `forbidden`,
    `bad_request`, `payload_too_large`, `unavailable`, …), or `unreachable`
    when no answer came; `status` the HTTP status (0 when unreachable);
    `retry_after` the seconds the server asked to wait, if it did.
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int = 0,
        retry_after: Optional[float] = None,
        body: Optional[Any] = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.body = body

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (503 or no answer)."""
        return self.code in ("unavailable", "unreachable") or self.status == 503
