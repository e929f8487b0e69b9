"""Bearer tokens: SHA-256 hashes compared in constant time, scopes, per-token rate limits."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Sequence
from typing import Final

from stocksync.api.errors import Forbidden, RateLimited, Unauthorized
from stocksync.config.settings import Scope, TokenSettings

__all__ = ["READ_SCOPE", "Authenticator", "TokenBucket"]

#: The scope every ``/v1`` availability endpoint needs (``admin`` implies it).
READ_SCOPE: Final[Scope] = "availability:read"
_ADMIN: Final[Scope] = "admin"
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="stocksync"'}
_INVALID_TOKEN: Final = {"WWW-Authenticate": 'Bearer realm="stocksync", error="invalid_token"'}


class TokenBucket:
    """A token bucket: ``rate`` requests per second sustained, ``capacity`` at once."""

    __slots__ = ("capacity", "clock", "level", "rate", "stamp")

    def __init__(
        self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = capacity
        self.clock = clock
        self.level = capacity
        self.stamp = clock()

    def take(self) -> float:
        """Take one request; 0.0 if allowed, else the seconds until one would be."""
        now = self.clock()
        level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if level >= 1.0:
            self.level = level - 1.0
            return 0.0
        self.level = level
        return (1.0 - level) / self.rate


class _Token:
    __slots__ = ("bucket", "digest", "name", "scopes")

    def __init__(self, settings: TokenSettings, clock: Callable[[], float]) -> None:
        self.name = settings.name
        self.digest = bytes.fromhex(settings.sha256)
        self.scopes = frozenset(settings.scopes)
        self.bucket: TokenBucket | None = None
        if settings.rate > 0:
            capacity = settings.burst or max(1.0, settings.rate)
            self.bucket = TokenBucket(settings.rate, float(capacity), clock)


class Authenticator:
    """Checks ``Authorization: Bearer`` headers against the configured tokens."""

    def __init__(
        self, tokens: Sequence[TokenSettings], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._tokens = [_Token(t, clock) for t in tokens]
        #: False in open mode (no tokens configured): every request is let through.
        self.enabled = bool(self._tokens)

    def check(self, authorization: str | None, scope: Scope = READ_SCOPE) -> str:
        """The name of the token ``authorization`` carries; raise unless it may go on."""
        if authorization is None:
            raise Unauthorized(
                "This endpoint needs an 'Authorization: Bearer <token>' header.", _CHALLENGE
            )
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthorized("The Authorization header must be 'Bearer <token>'.", _INVALID_TOKEN)
        digest = hashlib.sha256(secret.encode("utf-8", "replace")).digest()
        found: _Token | None = None
        for token in self._tokens:  # no early exit: the time taken says nothing
            if hmac.compare_digest(digest, token.digest) and found is None:
                found = token
        if found is None:
            raise Unauthorized("The bearer token is not valid.", _INVALID_TOKEN)
        if scope not in found.scopes and _ADMIN not in found.scopes:
            raise Forbidden(
                f"Token {found.name!r} lacks the scope {scope!r}.",
                {
                    "WWW-Authenticate": (
                        f'Bearer realm="stocksync", error="insufficient_scope", scope="{scope}"'
                    )
                },
            )
        if found.bucket is not None:
            wait = found.bucket.take()
            if wait:
                raise RateLimited(
                    f"Token {found.name!r} is over its rate of {found.bucket.rate:g} requests"
                    " per second; retry later.",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return found.name
