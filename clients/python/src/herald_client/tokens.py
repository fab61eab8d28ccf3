"""Client tokens (contract §4): the claims Herald reads, signed with PyJWT."""

from __future__ import annotations

import time
import uuid
from typing import Any, Dict, Optional


class TokenBuilder:
    """Builds a client JWT: `sub`, `exp`, `iat`, `jti` and the topic claims.

    >>> TokenBuilder("alice").topics("chat.*").expires_in(3600).sign_hs256(secret)
    """

    def __init__(self, sub: str) -> None:
        now = int(time.time())
        self._claims: Dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 3600}

    def topics(self, *patterns: str) -> "TokenBuilder":
        """Topic patterns the client may subscribe to."""
        self._claims["topics"] = list(patterns)
        return self

    def publish(self, *patterns: str) -> "TokenBuilder":
        """Topic patterns the client may publish to."""
        self._claims["publish"] = list(patterns)
        return self

    def presence(self, *patterns: str) -> "TokenBuilder":
        """Topic patterns whose members the client may see."""
        self._claims["presence"] = list(patterns)
        return self

    def expires_in(self, seconds: int) -> "TokenBuilder":
        """`exp`, this many seconds from `iat`."""
        self._claims["exp"] = int(self._claims["iat"]) + seconds
        return self

    def jti(self, value: Optional[str] = None) -> "TokenBuilder":
        """A token id, for revocation (a random one when not given)."""
        self._claims["jti"] = value or uuid.uuid4().hex
        return self

    def claim(self, name: str, value: Any) -> "TokenBuilder":
        """Any other claim (`iss`, `aud`, …)."""
        self._claims[name] = value
        return self

    def claims(self) -> Dict[str, Any]:
        """The claims as they will be signed."""
        return dict(self._claims)

    def sign(self, key: Any, algorithm: str, kid: Optional[str] = None) -> str:
        """Signs with `algorithm` (HS256, RS256, ES256, EdDSA) and `key` (a
        secret, or a PEM private key)."""
        import jwt

        headers: Dict[str, Any] = {"kid": kid} if kid else {}
        token: str = jwt.encode(self._claims, key, algorithm=algorithm, headers=headers or None)
        return token

    def sign_hs256(self, secret: str) -> str:
        """Signs with `jwt.hs256_secret`."""
        return self.sign(secret, "HS256")


