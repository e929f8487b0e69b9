"""What every request goes through: correlation id, access control, error mapping, metrics, log.

Every error leaves as ``{"error": {"code": ..., "message": ...}}`` with a
stable code; anything unexpected is logged with its traceback and answered
``500 internal`` without detail. A client that hung up before its request was
read (:class:`~stocksync.api.upload.ClientGone`) is a DEBUG line and
``stocksync_api_client_disconnects_total``, not an answer: nobody is left to
answer, and counting it as a 5xx would be a false alarm.

This is a wrapper put around each route's handler when the routes are
registered, not an aiohttp middleware: any middleware makes aiohttp add a
second one of its own and build the chain per request, a cost every request
pays (``benchmarks/README.md``, "Figures behind design choices"). Requests no route
matches reach :meth:`HandlerWrapper.unmatched`, registered last for every
method and path, so they get the same treatment and JSON errors.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Final, Literal, TypeVarTuple, cast

from aiohttp import web
from multidict import istr

from stocksync.api.auth import READ_SCOPE, Authenticator, scope_for
from stocksync.api.errors import (
    ApiError,
    MethodNotAllowed,
    NotFound,
    error_response,
)
from stocksync.api.metrics import ApiMetrics
from stocksync.api.upload import ClientGone
from stocksync.config.settings import Scope

__all__ = [
    "CORRELATION_HEADER",
    "UNMATCHED_ROUTE",
    "AccessLog",
    "HandlerWrapper",
    "SyncHandler",
]

log = logging.getLogger("stocksync.api")

#: A handler that answers without waiting for anything.
SyncHandler = Callable[[web.Request], web.StreamResponse]

#: What a handler takes after the request: nothing, or a path parameter.
Params = TypeVarTuple("Params")

#: Case-insensitive already (multidict's istr): header lookups skip folding its case.
CORRELATION_HEADER: Final = istr("X-Correlation-ID")
#: Metrics label of requests no route matched (one label, whatever the path).
UNMATCHED_ROUTE: Final = "unmatched"
#: A client's correlation id is echoed when it is 1-256 visible ASCII characters.
_CLIENT_ID: Final = re.compile(r"[!-~]{1,256}")


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


class HandlerWrapper:
    """Wraps handlers with correlation ids, bearer checks, error mapping, metrics, access log."""

    def __init__(
        self,
        *,
        metrics: ApiMetrics,
        authenticator: Authenticator,
        access_log: AccessLog,
    ) -> None:
        self.metrics = metrics
        self.authenticator = authenticator
        self.access_log = access_log
        self._id_prefix = os.urandom(6).hex() + "-"
        self._id_counter = itertools.count(1)

    def wrap(
        self,
        handler: Callable[[web.Request, *Params], Awaitable[web.StreamResponse]]
        | Callable[[web.Request, *Params], web.StreamResponse],
        route: str,
        *,
        protected: bool,
        scope: Scope | None = READ_SCOPE,
    ) -> Callable[[web.Request, *Params], Awaitable[web.StreamResponse]]:
        """``handler`` behind the wrapper; ``protected`` routes need a token if any is set.

        A protected route needs a token with ``scope`` (or ``admin``); with
        ``scope=None`` any valid token will do.

        ``handler`` may be a plain function when it has nothing to wait for (an
        answer from memory): calling it directly saves a coroutine per request.
        It may take parameters after the request (the SKU of a path), passed on
        as they come.
        """
        async_handler = (
            cast("Callable[[web.Request, *Params], Awaitable[web.StreamResponse]]", handler)
            if inspect.iscoroutinefunction(handler)
            else None
        )
        sync_handler = cast("Callable[[web.Request, *Params], web.StreamResponse]", handler)
        check = self.authenticator.check if protected and self.authenticator.enabled else None
        record = self.metrics.recorder(route)
        connections = self.metrics.connections
        access_log = self.access_log if self.access_log.enabled else None
        id_prefix, id_counter = self._id_prefix, self._id_counter
        perf_counter = time.perf_counter

        async def handle(request: web.Request, *params: *Params) -> web.StreamResponse:
            started = perf_counter()
            correlation_id = request.headers.get(CORRELATION_HEADER)
            if correlation_id is None or _CLIENT_ID.fullmatch(correlation_id) is None:
                correlation_id = f"{id_prefix}{next(id_counter):x}"
            token: str | None = None
            try:
                if check is not None:
                    token = check(request.headers.get("Authorization"), scope, request.remote)
                if async_handler is None:
                    response = sync_handler(request, *params)
                else:
                    response = await async_handler(request, *params)
            except ApiError as exc:
                response = error_response(exc)
            except ClientGone as exc:
                connections.client_gone += 1
                log.debug(
                    "the client of %s %s hung up before sending its whole request: %s",
                    request.method,
                    request.path,
                    exc,
                    extra={"correlation_id": correlation_id},
                )
                gone = web.Response(status=400)  # nobody reads it: the connection is gone
                gone.force_close()
                return gone
            except Exception as exc:
                if not isinstance(exc, web.HTTPException):
                    log.exception(
                        "unhandled error answering %s %s",
                        request.method,
                        request.path,
                        extra={"correlation_id": correlation_id},
                    )
                response = error_response(exc)
            response.headers[CORRELATION_HEADER] = correlation_id
            elapsed = perf_counter() - started
            record(response.status, elapsed)
            if access_log is not None:
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

        return handle

    async def unmatched(self, request: web.Request) -> web.StreamResponse:
        """The handler of requests no route takes: 404, or 405 naming the methods allowed."""
        if self.authenticator.enabled and request.path.startswith("/v1/"):
            # Say nothing about the path to a client without the right token.
            self.authenticator.check(
                request.headers.get("Authorization"), scope_for(request.path), request.remote
            )
        if not request.path.startswith("/"):  # e.g. OPTIONS *: no endpoint is there
            raise NotFound(f"No endpoint takes the request target {request.path[:80]!r}.")
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            match, methods = await resource.resolve(request)
            if match is None and methods and "*" not in methods:
                allowed |= methods
        if allowed:
            allow = ",".join(sorted(allowed))
            raise MethodNotAllowed(
                f"This endpoint does not take {request.method}; it takes {allow}.",
                {"Allow": allow},
            )
        raise NotFound("No endpoint at this path.")
