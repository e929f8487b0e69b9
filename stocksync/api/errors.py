"""API errors: each one is an HTTP status and a stable ``code`` of the API contract.

Handlers raise these; the error middleware turns them into
``{"error": {"code": ..., "message": ...}}`` bodies. The tree::

    ApiError
    ├── BadRequest            400 bad_request
    ├── InvalidSku            400 invalid_sku
    ├── Unauthorized          401 unauthorized
    ├── Forbidden             403 forbidden
    ├── NotFound              404 not_found (no such endpoint)
    ├── UnknownSku            404 unknown_sku
    ├── UnknownChannel        404 unknown_channel
    ├── UnknownHold           404 unknown_hold
    ├── MethodNotAllowed      405 method_not_allowed
    ├── RequestTimeout        408 request_timeout
    ├── InsufficientStock     409 insufficient_stock (with the short lines)
    ├── HoldConflict          409 hold_conflict
    ├── HoldEnded             409 hold_ended
    ├── TooManySkus           413 too_many_skus
    ├── RateLimited           429 rate_limited
    ├── InternalError         500 internal
    ├── NotReady              503 not_ready
    └── Overloaded            503 overloaded

``not_found``, ``method_not_allowed``, ``request_timeout``, ``overloaded`` and
``internal`` are additions to the contract's list: for requests that reach no
endpoint, clients too slow to send their request, a server at its connection
or upload limit, and bugs.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

__all__ = [
    "ApiError",
    "BadRequest",
    "Forbidden",
    "HoldConflict",
    "HoldEnded",
    "InsufficientStock",
    "InternalError",
    "InvalidSku",
    "MethodNotAllowed",
    "NotFound",
    "NotReady",
    "Overloaded",
    "RateLimited",
    "RequestTimeout",
    "TooManySkus",
    "Unauthorized",
    "UnknownChannel",
    "UnknownHold",
    "UnknownSku",
]

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class ApiError(Exception):
    """An error answer: an HTTP status, a stable code, a sentence, and extra headers."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(
        self, message: str, headers: Mapping[str, str] = _NO_HEADERS, *, close: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers
        #: Close the connection after answering (a body left unread, a client too slow).
        self.close = close


class BadRequest(ApiError):
    """The request is malformed: bad JSON, wrong types, a missing or invalid parameter."""

    status = 400
    code = "bad_request"


class InvalidSku(ApiError):
    """A SKU is not 1-64 characters from ``[A-Za-z0-9._:/-]``."""

    status = 400
    code = "invalid_sku"


class Unauthorized(ApiError):
    """No bearer token, or one that matches no configured token."""

    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    """The token lacks the scope the endpoint needs."""

    status = 403
    code = "forbidden"


class NotFound(ApiError):
    """No endpoint at this path."""

    status = 404
    code = "not_found"


class UnknownSku(ApiError):
    """The model has never seen this SKU."""

    status = 404
    code = "unknown_sku"


class UnknownChannel(ApiError):
    """The channel is not configured."""

    status = 404
    code = "unknown_channel"


class UnknownHold(ApiError):
    """No hold has this ``hold_id`` (or it ended more than 24 hours ago)."""

    status = 404
    code = "unknown_hold"


class InsufficientStock(ApiError):
    """An all-or-nothing hold has a line the channel cannot hold; nothing is held."""

    status = 409
    code = "insufficient_stock"


class HoldConflict(ApiError):
    """The ``hold_id`` names a hold with another channel or other lines."""

    status = 409
    code = "hold_conflict"


class HoldEnded(ApiError):
    """The hold was released, converted or has expired: it can no longer be extended."""

    status = 409
    code = "hold_ended"


class MethodNotAllowed(ApiError):
    """The endpoint exists but not with this method."""

    status = 405
    code = "method_not_allowed"


class RequestTimeout(ApiError):
    """The client did not send its headers or body in time."""

    status = 408
    code = "request_timeout"


class TooManySkus(ApiError):
    """More SKUs, or a bigger body, than one request may carry."""

    status = 413
    code = "too_many_skus"


class RateLimited(ApiError):
    """The token has used up its request rate."""

    status = 429
    code = "rate_limited"


class InternalError(ApiError):
    """A bug; the details go to the log, never to the client."""

    status = 500
    code = "internal"


class NotReady(ApiError):
    """The in-memory model is not loaded yet."""

    status = 503
    code = "not_ready"


class Overloaded(ApiError):
    """The process is at its connection limit or holds as many uploads as it may."""

    status = 503
    code = "overloaded"
