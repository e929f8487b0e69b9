"""HTTP errors: each one is an HTTP status and a stable ``code`` of the API contract.

Handlers raise these. :func:`error_response` turns any exception into the
contract's answer, ``{"error": {"code": ..., "message": ...}}`` (an
:class:`ApiError` as it is, an aiohttp HTTP error as its equivalent, anything
else as ``500 internal`` without detail); every HTTP server of stocksync
answers its errors through it: the API's handler wrapper and protocol, and the
worker's and the feed's health endpoints. The tree::

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
    ├── Rebuilding            503 model_lost
    └── Overloaded            503 overloaded

``not_found``, ``method_not_allowed``, ``request_timeout``, ``overloaded`` and
``internal`` are additions to the contract's list: for requests that reach no
endpoint, clients too slow to send their request, a server at its connection
or upload limit, and bugs; ``model_lost`` is the contract's operator addition
for ``/readyz`` while Redis lost the model.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar, Final

import msgspec
from aiohttp import web

from stocksync.codecs.holds import InsufficientBody, InsufficientDetail, ShortLine
from stocksync.codecs.projections import ErrorBody, ErrorDetail
from stocksync.errors import StocksyncError

__all__ = [
    "INTERNAL_MESSAGE",
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
    "Rebuilding",
    "RequestTimeout",
    "TooManySkus",
    "Unauthorized",
    "UnknownChannel",
    "UnknownHold",
    "UnknownSku",
    "api_error",
    "error_body",
    "error_response",
    "json_errors",
    "not_ready",
]

log = logging.getLogger("stocksync.http")

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
#: An aiohttp request handler.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: What a client is told of a failure of ours (the detail goes to the log).
INTERNAL_MESSAGE: Final = "The server failed to answer; the failure is logged."
_JSON: Final = "application/json"
_encoder: Final = msgspec.json.Encoder()


class ApiError(StocksyncError):
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

    def __init__(self, message: str, lines: Sequence[ShortLine]) -> None:
        super().__init__(message)
        #: The lines that cannot be held in full, with what the channel has available.
        self.lines = list(lines)


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
    """The process cannot answer yet: the model is not loaded, Redis or the broker is away."""

    status = 503
    code = "not_ready"


class Rebuilding(ApiError):
    """Redis lost the model; it is being rebuilt from the topics."""

    status = 503
    code = "model_lost"


class Overloaded(ApiError):
    """The process is at its connection limit or holds as many uploads as it may."""

    status = 503
    code = "overloaded"


def not_ready(code: str, message: str) -> ApiError:
    """The ``503`` of ``/readyz``: ``model_lost`` while the model is rebuilt, else ``not_ready``."""
    kind = Rebuilding if code == Rebuilding.code else NotReady
    return kind(message, {"Retry-After": "1"})


def api_error(exc: BaseException) -> ApiError:
    """The API error answering ``exc``: itself, an aiohttp HTTP error's match, or internal."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, web.HTTPException):
        if exc.status == 404:
            return NotFound("No endpoint at this path.")
        if exc.status == 405:
            allow = exc.headers.get("Allow", "")
            return MethodNotAllowed(
                f"This endpoint does not take this method; it takes {allow}.", {"Allow": allow}
            )
        if exc.status == 413:
            return TooManySkus("The body is too large; ask for fewer SKUs per request.")
        if exc.status < 500:
            return BadRequest(exc.reason or "Bad request.")
    return InternalError(INTERNAL_MESSAGE)


def error_body(exc: BaseException) -> bytes:
    """The contract's JSON error body answering ``exc`` (see :func:`api_error`)."""
    error = api_error(exc)
    if isinstance(error, InsufficientStock):
        detail = InsufficientDetail(code=error.code, message=error.message, lines=error.lines)
        return _encoder.encode(InsufficientBody(error=detail))
    return _encoder.encode(ErrorBody(error=ErrorDetail(code=error.code, message=error.message)))


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Middleware of the small servers (health and metrics): every error as the contract's JSON.

    The API itself maps errors in its handler wrapper (:mod:`stocksync.api.middleware`),
    through :func:`error_response` too.
    """
    try:
        return await handler(request)
    except Exception as exc:
        if not isinstance(exc, ApiError | web.HTTPException):
            log.exception("unhandled error answering %s %s", request.method, request.path)
        return error_response(exc)


def error_response(exc: BaseException, status: int | None = None) -> web.Response:
    """The JSON answer to ``exc``, with ``status`` or its own (aiohttp's errors keep theirs)."""
    error = api_error(exc)
    if status is None:
        status = exc.status if isinstance(exc, web.HTTPException) else error.status
    response = web.Response(
        status=status, body=error_body(error), headers={"Content-Type": _JSON, **error.headers}
    )
    if error.close:
        response.force_close()
    return response
