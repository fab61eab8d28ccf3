"""Herald from Python backends: publish over the admin API, subscribe over
WebSocket with recovery, and mint client tokens.

`Publisher` (blocking) and `AsyncPublisher` (asyncio) publish, read history
and presence, disconnect users, revoke tokens and read stats. Every publish
carries an `idempotency_key` (one is generated when you give none), so the
retries they make on 503 and connection errors, after the server's
`Retry-After`, deliver an event at most once. Errors are `HeraldError` with
the contract's `code`. `Subscriber` (asyncio) holds a WebSocket to the
gateway and yields every event of its topics once and in order, across
reconnects, node loss and token expiry. `TokenBuilder` mints the JWTs your
clients connect with.
"""

from .errors import HeraldError
from .publisher import AsyncPublisher, Publisher, RetryPolicy
from .subscriber import Backoff, Message, Subscriber, close_action
from .tokens import TokenBuilder

__all__ = [
    "AsyncPublisher",
    "Backoff",
    "HeraldError",
    "Message",
    "Publisher",
    "RetryPolicy",
    "Subscriber",
    "TokenBuilder",
    "close_action",
]
__version__ = "0.1.0"
