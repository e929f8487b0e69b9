"""Bearer tokens: SHA-256 hashes compared in constant time, scopes, rate limits for the host.

Scopes (``availability:read``, ``holds:write``, ``admin``) each grant what
their name says; ``admin`` grants everything. A route names the scope it needs;
``None`` means any valid token will do (the OpenAPI document).

Two limits, both counted for the whole host through
:class:`~stocksync.api.hoststate.HostState` (the processes of ``stocksync api
--processes N`` share them): a token's own rate, and failed authentications
per client address (IPv4 address, IPv6 /64). An address past its failure limit
gets ``429 rate_limited`` for every request that needs a token, before its
token is even looked at, so a guesser learns nothing more until the limit
lets it try again.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import zlib
from collections.abc import Sequence
from typing import Final

from stocksync.api.errors import Forbidden, RateLimited, Unauthorized
from stocksync.api.hoststate import HostState
from stocksync.config.settings import Scope, TokenSettings

__all__ = [
    "ADMIN_SCOPE",
    "HOLDS_SCOPE",
    "READ_SCOPE",
    "Authenticator",
    "address_slot",
    "scope_for",
]

#: Reading availability (``GET /v1/availability/...``, ``POST /v1/availability/query``).
READ_SCOPE: Final[Scope] = "availability:read"
#: Placing and ending holds (``/v1/holds``).
HOLDS_SCOPE: Final[Scope] = "holds:write"
#: Everything.
ADMIN_SCOPE: Final[Scope] = "admin"
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="stocksync"'}
_INVALID_TOKEN: Final = {"WWW-Authenticate": 'Bearer realm="stocksync", error="invalid_token"'}


#: Collections of endpoints and the scope they need.
_SCOPED: Final[tuple[tuple[str, Scope], ...]] = (
    ("/v1/availability", READ_SCOPE),
    ("/v1/holds", HOLDS_SCOPE),
)


def scope_for(path: str) -> Scope | None:
    """The scope an endpoint at ``path`` needs (None: any valid token will do)."""
    for collection, scope in _SCOPED:
        if path == collection or path.startswith(collection + "/"):
            return scope
    return None


def address_slot(remote: str | None) -> int:
    """A stable hash of a client address (IPv6 by its /64), the same in every process."""
    if not remote:
        return 0
    if ":" in remote:
        try:
            return zlib.crc32(ipaddress.IPv6Address(remote.partition("%")[0]).packed[:8])
        except ValueError:
            pass
    return zlib.crc32(remote.encode("utf-8", "replace"))


class _Token:
    __slots__ = ("bucket", "capacity", "digest", "name", "rate", "scopes")

    def __init__(self, settings: TokenSettings, bucket: int) -> None:
        self.name = settings.name
        self.digest = bytes.fromhex(settings.sha256)
        self.scopes = frozenset(settings.scopes)
        self.rate = settings.rate
        self.capacity = float(settings.burst or max(1.0, settings.rate))
        self.bucket = bucket if settings.rate > 0 else None


class Authenticator:
    """Checks ``Authorization: Bearer`` headers against the configured tokens."""

    def __init__(
        self,
        tokens: Sequence[TokenSettings],
        host: HostState | None = None,
        *,
        failure_rate: float = 1.0,
        failure_burst: int = 20,
    ) -> None:
        self.host = host if host is not None else HostState(len(tokens))
        if self.host.tokens < len(tokens):
            raise ValueError(f"the host state has room for {self.host.tokens} tokens")
        self._tokens = [_Token(t, self.host.token_bucket(i)) for i, t in enumerate(tokens)]
        self.failure_rate = failure_rate
        self.failure_capacity = float(failure_burst)
        #: False in open mode (no tokens configured): every request is let through.
        self.enabled = bool(self._tokens)

    def check(
        self, authorization: str | None, scope: Scope | None = READ_SCOPE, remote: str | None = None
    ) -> str:
        """The name of the token ``authorization`` carries; raise unless it may go on."""
        host = self.host
        address = host.address_bucket(address_slot(remote))
        level = host.level(address, self.failure_rate, self.failure_capacity)
        if level < 1.0:
            wait = (1.0 - level) / self.failure_rate
            raise RateLimited(
                "Too many failed authentications from this address; retry later.",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        found = self._find(authorization, address)
        if scope is not None and scope not in found.scopes and ADMIN_SCOPE not in found.scopes:
            raise Forbidden(
                f"Token {found.name!r} lacks the scope {scope!r}.",
                {
                    "WWW-Authenticate": (
                        f'Bearer realm="stocksync", error="insufficient_scope", scope="{scope}"'
                    )
                },
            )
        if found.bucket is not None:
            wait = host.take(found.bucket, found.rate, found.capacity)
            if wait:
                raise RateLimited(
                    f"Token {found.name!r} is over its rate of {found.rate:g} requests"
                    " per second; retry later.",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return found.name

    def _find(self, authorization: str | None, address: int) -> _Token:
        """The token ``authorization`` carries; a failure is counted against ``address``."""
        if authorization is None:
            self._failed(address)
            raise Unauthorized(
                "This endpoint needs an 'Authorization: Bearer <token>' header.", _CHALLENGE
            )
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            self._failed(address)
            raise Unauthorized("The Authorization header must be 'Bearer <token>'.", _INVALID_TOKEN)
        digest = hashlib.sha256(secret.encode("utf-8", "replace")).digest()
        found: _Token | None = None
        for token in self._tokens:  # no early exit: the time taken says nothing
            if hmac.compare_digest(digest, token.digest) and found is None:
                found = token
        if found is None:
            self._failed(address)
            raise Unauthorized("The bearer token is not valid.", _INVALID_TOKEN)
        return found

    def _failed(self, address: int) -> None:
        self.host.take(address, self.failure_rate, self.failure_capacity)
