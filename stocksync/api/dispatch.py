"""The two availability endpoints, answered before aiohttp's router looks at the request.

aiohttp's ``Application`` resolves every request through its router, builds and
freezes a match info and checks for ``Expect`` before it calls a handler: a
good part of what a constant answer costs, measured against aiohttp's low-level
server answering the same (``benchmarks/README.md``, "Figures behind design
choices"). The availability endpoints have fixed paths, so :class:`HotRoutes`
recognises them with a prefix test and a comparison and calls their handlers,
as :class:`~stocksync.api.middleware.HandlerWrapper` wrapped them, directly.
Everything else goes on to the application's own handling, and so do the rare
requests whose answer the router's rules decide: a path with a percent escape
(the router decodes ``%2F`` in a path parameter), a body announced with
``Expect``, and ``GET /v1/availability/query`` (the batch path, answered 405).
The application keeps every route, so it answers the same without
:class:`ApiRunner` (the tests check that both answer alike). A request target
that is not a path (``OPTIONS *``), which the router would answer in plain
text, goes straight to the wrapper's handler of unmatched requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, cast

from aiohttp import hdrs, web

from stocksync.api.metrics import ConnectionStats
from stocksync.api.protocol import (
    CONNECTION_LIMITS,
    UNREAD_BODY_LINGER,
    ApiServer,
    ConnectionLimits,
)

__all__ = [
    "AVAILABILITY_PREFIX",
    "CONNECTION_STATS",
    "HOLDS_PATH",
    "HOT_ROUTES",
    "QUERY_PATH",
    "ApiRunner",
    "HotRoutes",
]

AVAILABILITY_PREFIX: Final = "/v1/availability/"
QUERY_NAME: Final = "query"
QUERY_PATH: Final = AVAILABILITY_PREFIX + QUERY_NAME
#: ``POST /v1/holds``: a checkout's hot path too (one Redis round trip behind it).
HOLDS_PATH: Final = "/v1/holds"

#: What aiohttp's low-level server calls with each request.
RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_EXPECT: Final = hdrs.EXPECT


class HotRoutes:
    """``GET``/``HEAD /v1/availability/{sku}``, ``POST .../query`` and ``POST /v1/holds``."""

    def __init__(
        self,
        get: Callable[[web.Request, str], Awaitable[web.StreamResponse]],
        query: Callable[[web.Request], Awaitable[web.StreamResponse]],
        unmatched: Callable[[web.Request], Awaitable[web.StreamResponse]],
        hold: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
    ) -> None:
        self.get = get
        self.query = query
        self.unmatched = unmatched
        self.hold = hold

    def dispatcher(self, fallback: RequestHandler) -> RequestHandler:
        """A request handler for the server: the hot endpoints, else ``fallback``.

        It returns the handler's coroutine rather than awaiting it, which saves
        a coroutine per request.
        """
        get, query, unmatched, hold = self.get, self.query, self.unmatched, self.hold
        skip = len(AVAILABILITY_PREFIX)

        def dispatch(request: web.Request) -> Awaitable[web.StreamResponse]:
            path = request.rel_url.path_safe
            if path.startswith(AVAILABILITY_PREFIX):
                method = request.method
                if method == "GET" or method == "HEAD":
                    sku = path[skip:]
                    if "%" not in sku and sku != QUERY_NAME:
                        return get(request, sku)
                elif method == "POST" and path == QUERY_PATH and _EXPECT not in request.headers:
                    return query(request)
            elif (
                path == HOLDS_PATH
                and hold is not None
                and request.method == "POST"
                and _EXPECT not in request.headers
            ):
                return hold(request)
            elif not path.startswith("/"):
                return unmatched(request)
            return fallback(request)

        # The server makes its requests with the application's factory: web.Request.
        return cast(RequestHandler, dispatch)


HOT_ROUTES: Final = web.AppKey("hot_routes", HotRoutes)
#: The connection counters the app's metrics report and its server keeps.
CONNECTION_STATS: Final = web.AppKey("connection_stats", ConnectionStats)


class ApiRunner(web.AppRunner):
    """An ``AppRunner`` whose server hands requests to the app's :class:`HotRoutes` first."""

    async def _make_server(self) -> web.Server:
        """The application's server, with the app's connection limits and JSON errors."""
        limits = self.app.get(CONNECTION_LIMITS) or ConnectionLimits()
        self._kwargs["keepalive_timeout"] = limits.idle_timeout
        # A refused upload's connection closes soon after its answer, not 10 s later.
        self._kwargs["lingering_time"] = UNREAD_BODY_LINGER
        server = await super()._make_server()
        server.__class__ = ApiServer  # same state; only makes other connections
        cast(ApiServer, server).adopt(limits, self.app.get(CONNECTION_STATS) or ConnectionStats())
        return server

    async def setup(self) -> None:
        """Start the application and make its server; then put the hot routes in front."""
        await super().setup()
        server = self.server
        assert server is not None  # made by setup
        server.request_handler = self.app[HOT_ROUTES].dispatcher(server.request_handler)
