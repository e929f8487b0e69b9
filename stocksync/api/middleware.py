"""The one middleware: correlation ids, access control, error mapping, metrics, access log.

Every error leaves as ``{"error": {"code": ..., "message": ...}}`` with a
stable code; anything unexpected is logged with its traceback and answered
``500 internal`` without detail.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import re
import time
from typing import Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from stocksync.api.auth import Authenticator
from stocksync.api.bodies import error_body
from stocksync.api.errors import (
    ApiError,
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    TooManySkus,
)
from stocksync.api.metrics import ApiMetrics

__all__ = [
    "CORRELATION_HEADER",
    "AccessLog",
    "CorrelationIds",
    "error_response",
    "request_middleware",
]

log = logging.getLogger("stocksync.api")

CORRELATION_HEADER: Final = "X-Correlation-ID"
#: A client's correlation id is echoed when it is 1-256 visible ASCII characters.
_CLIENT_ID: Final = re.compile(r"[!-~]{1,256}")
_UNMATCHED: Final = "unmatched"


class CorrelationIds:
    """Process-unique correlation ids: a random prefix and a counter, cheap per request."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex() + "-"
        self._counter = itertools.count(1)

    def new(self) -> str:
        """A fresh id."""
        return f"{self._prefix}{next(self._counter):x}"


class AccessLog:
    """JSON access log through :mod:`logging`: off, a random sample, or every request."""

    def __init__(
        self,
        mode: Literal["off", "sampled", "all"],
        sample: float,
        logger: logging.Logger | None = None,
    ) -> None:
        self.mode = mode
        self.sample = sample
        self.logger = logger or logging.getLogger("stocksync.api.access")
        self.enabled = mode == "all" or (mode == "sampled" and sample > 0)

    def record(
        self,
        request: web.Request,
        status: int,
        seconds: float,
        correlation_id: str,
        token: str | None,
        body_bytes: int | None,
    ) -> None:
        """Log one request (or skip it when sampling says so)."""
        if self.mode == "sampled" and random.random() >= self.sample:
            return
        self.logger.info(
            "%s %s %d",
            request.method,
            request.path,
            status,
            extra={
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "bytes": body_bytes,
                "correlation_id": correlation_id,
                "token": token,
                "remote": request.remote,
                "user_agent": request.headers.get("User-Agent"),
            },
        )


def error_response(error: ApiError, status: int | None = None) -> web.Response:
    """The JSON response of an :class:`ApiError` (with its own status unless one is given)."""
    headers = {"Content-Type": "application/json", **error.headers}
    return web.Response(
        status=status or error.status,
        body=error_body(error.code, error.message),
        headers=headers,
    )


def _from_http(exc: web.HTTPException) -> web.Response:
    """The JSON answer to an aiohttp HTTP exception (no route, wrong method, body too big)."""
    status = exc.status
    if status == 404:
        return error_response(NotFound("No endpoint at this path."))
    if status == 405:
        allow = exc.headers.get("Allow", "")
        return error_response(
            MethodNotAllowed(
                f"This endpoint does not take that method; it takes {allow}.", {"Allow": allow}
            )
        )
    if status == 413:
        return error_response(TooManySkus("The body is too large; ask for fewer SKUs per request."))
    if status < 500:
        return error_response(BadRequest(exc.reason or "Bad request."), status)
    return error_response(
        InternalError("The server failed to answer; the failure is logged."), status
    )


def request_middleware(
    *,
    metrics: ApiMetrics,
    authenticator: Authenticator,
    access_log: AccessLog,
    correlation_ids: CorrelationIds,
    public_paths: frozenset[str],
) -> Middleware:
    """The application's middleware; paths under ``/v1/`` need a token unless public."""
    auth_on = authenticator.enabled
    logged = access_log.enabled
    route_labels: dict[object, str] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        correlation_id = request.headers.get(CORRELATION_HEADER)
        if correlation_id is None or _CLIENT_ID.fullmatch(correlation_id) is None:
            correlation_id = correlation_ids.new()
        token: str | None = None
        try:
            if auth_on:
                path = request.path
                if path.startswith("/v1/") and path not in public_paths:
                    token = authenticator.check(request.headers.get("Authorization"))
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc)
        except web.HTTPException as exc:
            response = _from_http(exc)
        except Exception:
            log.exception(
                "unhandled error answering %s %s",
                request.method,
                request.path,
                extra={"correlation_id": correlation_id},
            )
            response = error_response(
                InternalError("The server failed to answer; the failure is logged.")
            )
        response.headers[CORRELATION_HEADER] = correlation_id
        elapsed = time.perf_counter() - started
        route = request.match_info.route
        label = route_labels.get(route)
        if label is None:
            resource = route.resource
            if resource is None:  # a fresh route object per unmatched request: never cache
                label = _UNMATCHED
            else:
                label = route_labels[route] = resource.canonical
        metrics.observe(label, response.status, elapsed)
        if logged:
            body = response.body if isinstance(response, web.Response) else None
            access_log.record(
                request,
                response.status,
                elapsed,
                correlation_id,
                token,
                len(body) if isinstance(body, bytes | bytearray) else None,
            )
        return response

    return middleware
