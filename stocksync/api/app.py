"""The aiohttp application factory of the availability API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import Resource
from redis.backoff import NoBackoff
from redis.retry import Retry

from stocksync.api.auth import HOLDS_SCOPE, READ_SCOPE, Authenticator
from stocksync.api.bodies import encode
from stocksync.api.dispatch import (
    AVAILABILITY_PREFIX,
    CONNECTION_STATS,
    HOT_ROUTES,
    QUERY_NAME,
    QUERY_PATH,
    HotRoutes,
)
from stocksync.api.handlers import AvailabilityHandlers, OperationalHandlers
from stocksync.api.holds import HOLDS_PATH, HoldHandlers
from stocksync.api.hoststate import HostState
from stocksync.api.metrics import ApiMetrics, ConnectionStats
from stocksync.api.middleware import UNMATCHED_ROUTE, AccessLog, HandlerWrapper, SyncHandler
from stocksync.api.model import AvailabilityModel, ModelSync, SyncStatus, now_ms
from stocksync.api.openapi import OPENAPI_PATH, openapi_document
from stocksync.api.protocol import CONNECTION_LIMITS, ConnectionLimits
from stocksync.api.upload import BodyBudget, give_back_memory
from stocksync.config.connections import redis_client_options
from stocksync.config.settings import Settings
from stocksync.store import RedisStore
from stocksync.store.holds import HoldStore
from stocksync.store.layout import Keys
from stocksync.store.redis import Client, open_client

__all__ = [
    "BODY_BUDGET",
    "HOLDS",
    "METRICS",
    "MODEL",
    "REDIS",
    "SETTINGS",
    "SYNC",
    "create_app",
]

log = logging.getLogger("stocksync.api")

SETTINGS: Final = web.AppKey("settings", Settings)
MODEL: Final = web.AppKey("model", AvailabilityModel)
METRICS: Final = web.AppKey("metrics", ApiMetrics)
REDIS: Final = web.AppKey[Client]("redis")
BODY_BUDGET: Final = web.AppKey("body_budget", BodyBudget)
SYNC: Final = web.AppKey("sync", ModelSync)
HOLDS: Final = web.AppKey("holds", HoldStore)

#: Longer than the XREAD block, so a silent Redis is noticed without cutting off reads.
_SOCKET_TIMEOUT: Final = 5.0
_CONNECT_TIMEOUT: Final = 2.0


async def _model_sync(app: web.Application) -> AsyncIterator[None]:
    """A Redis client and the sync that loads and follows the model, for the app's life."""
    settings = app[SETTINGS]
    if not settings.api.tokens:
        log.warning(
            "no API tokens configured: /v1 is open to every client (configure [[api.tokens]])"
        )
    client = open_client(
        settings.redis_url,
        cluster=settings.redis_cluster,
        socket_timeout=_SOCKET_TIMEOUT,
        socket_connect_timeout=_CONNECT_TIMEOUT,
        retry=Retry(NoBackoff(), 0),  # the sync retries with its own backoff
        **redis_client_options(settings),
    )
    sync = ModelSync(
        app[MODEL], RedisStore(client, Keys(settings.redis_namespace)),
        load_page=settings.api.load_page,
    )
    app[REDIS] = client
    app[SYNC] = sync
    # Holds on connections of their own (see HoldStore), not the sync's; the store
    # bounds each call itself (a socket_timeout would cost a Task per command).
    holds_client: Client = client if settings.redis_cluster else aioredis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=_CONNECT_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        **redis_client_options(settings),
    )
    holds = HoldStore(
        holds_client,
        lambda: sync.store.keys,
        changes_maxlen=settings.worker.changes_maxlen,
        timeout=_SOCKET_TIMEOUT,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
    app[HOLDS] = holds
    sync.holds = holds
    await sync.start()
    try:
        yield
    finally:
        await sync.stop()
        await holds.close()
        if holds_client is not client:
            await holds_client.aclose()
        await client.aclose()


async def _memory_steward(app: web.Application) -> AsyncIterator[None]:
    """Give memory back after large uploads, for the app's life."""
    task = asyncio.create_task(give_back_memory(app[BODY_BUDGET]))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _sku_from_path(
    get: Callable[[web.Request, str], Awaitable[web.StreamResponse]],
) -> Handler:
    """``get`` as a routed handler: the SKU from the router's match."""

    async def routed(request: web.Request) -> web.StreamResponse:
        return await get(request, request.match_info["sku"])

    return routed


def _param_from_path(
    handler: Callable[[web.Request, str], Awaitable[web.StreamResponse]], name: str
) -> Handler:
    """``handler`` as a routed handler: its parameter from the router's match."""

    async def routed(request: web.Request) -> web.StreamResponse:
        return await handler(request, request.match_info[name])

    return routed


def create_app(settings: Settings, host: HostState | None = None) -> web.Application:
    """The availability API for ``settings``; it loads its model from Redis when started.

    ``host`` is the state the API processes of this host share (rate buckets,
    restarts); without it the app has a private one, as a single process does.
    """
    api = settings.api
    model = AvailabilityModel(
        [c.name for c in settings.channels], [c.low_stock_threshold for c in settings.channels]
    )
    app = web.Application(client_max_size=api.max_body_bytes)

    def status() -> SyncStatus | None:
        sync = app.get(SYNC)
        return None if sync is None else sync.status()

    host = host if host is not None else HostState(len(api.tokens))
    connections = ConnectionStats()
    metrics = ApiMetrics(
        status, connections, restarts=(lambda: host.restarts) if host.shared else None
    )
    authenticator = Authenticator(
        api.tokens,
        host,
        failure_rate=api.auth_failure_rate,
        failure_burst=api.auth_failure_burst,
    )
    metrics.hold_figures = lambda: (
        model.holds_active(now_ms()),
        model.expired_holds,
        model.holds_over(now_ms()),
    )
    metrics.synthetic_skus = lambda: int(settings.probe.sku in model)
    wrapper = HandlerWrapper(
        metrics=metrics,
        authenticator=authenticator,
        access_log=AccessLog(api.access_log, api.access_log_sample),
    )
    app[SETTINGS] = settings
    app[MODEL] = model
    app[METRICS] = metrics
    app[CONNECTION_STATS] = connections
    app[CONNECTION_LIMITS] = ConnectionLimits(
        header_timeout=api.header_timeout_s,
        body_timeout=api.body_timeout_s,
        idle_timeout=api.idle_timeout_s,
        max_connections=api.max_connections,
    )
    app[BODY_BUDGET] = budget = BodyBudget(api.max_buffered_body_bytes)
    app.cleanup_ctx.append(_model_sync)
    app.cleanup_ctx.append(_memory_steward)

    availability = AvailabilityHandlers(
        model, max_skus=api.max_skus, max_body_bytes=api.max_body_bytes, body_budget=budget
    )
    ops = OperationalHandlers(status, metrics, encode(openapi_document(settings)))
    # The hot endpoints: HotRoutes serves them ahead of the router (see
    # stocksync.api.dispatch), and the router serves what HotRoutes leaves to it.
    query_resource = app.router.add_resource(QUERY_PATH)
    query = wrapper.wrap(
        availability.query, query_resource.canonical, protected=True, scope=READ_SCOPE
    )
    query_resource.add_route("POST", query)
    # Any characters, newlines included, so that every bad SKU gets invalid_sku; but not
    # the batch path itself, so that GET on it is 405 rather than an unknown SKU.
    sku_resource = app.router.add_resource(
        AVAILABILITY_PREFIX + rf"{{sku:(?!{QUERY_NAME}\Z)[\s\S]*}}"
    )
    get = wrapper.wrap(availability.get, sku_resource.canonical, protected=True, scope=READ_SCOPE)
    routed_get = _sku_from_path(get)
    sku_resource.add_route("HEAD", routed_get)
    sku_resource.add_route("GET", routed_get)
    unmatched = wrapper.wrap(wrapper.unmatched, UNMATCHED_ROUTE, protected=False)
    holds = HoldHandlers(
        lambda: app.get(HOLDS),
        [c.name for c in settings.channels],
        settings.api.holds,
        metrics,
        max_body_bytes=api.max_body_bytes,
        body_budget=budget,
    )
    create = app.router.add_resource(HOLDS_PATH)
    hold = wrapper.wrap(holds.create, create.canonical, protected=True, scope=HOLDS_SCOPE)
    create.add_route("POST", hold)
    app[HOT_ROUTES] = HotRoutes(get, query, unmatched, hold)
    one = app.router.add_resource(HOLDS_PATH + "/{hold_id}")
    extend = app.router.add_resource(HOLDS_PATH + "/{hold_id}/extend")
    by_id: list[tuple[Resource, str, Callable[[web.Request, str], Awaitable[web.Response]]]] = [
        (one, "GET", holds.get),
        (one, "DELETE", holds.release),
        (extend, "POST", holds.extend),
    ]
    for hold_resource, method, hold_handler in by_id:
        hold_route = wrapper.wrap(
            hold_handler, hold_resource.canonical, protected=True, scope=HOLDS_SCOPE
        )
        hold_resource.add_route(method, _param_from_path(hold_route, "hold_id"))
    # (path, handler, protected): the OpenAPI document needs a token, as all of /v1 does
    # (any valid token); the operational endpoints serve probes and scrapers without one.
    routes: list[tuple[str, Handler | SyncHandler, bool]] = [
        (OPENAPI_PATH, ops.openapi, True),
        ("/healthz", ops.healthz, False),
        ("/readyz", ops.readyz, False),
        ("/metrics", ops.metrics, False),
    ]
    for path, handler, protected in routes:
        resource = app.router.add_resource(path)
        wrapped = wrapper.wrap(handler, resource.canonical, protected=protected, scope=None)
        resource.add_route("HEAD", wrapped)
        resource.add_route("GET", wrapped)
    # Last, so that it only takes what no route above does.
    app.router.add_route("*", r"/{path:[\s\S]*}", unmatched)
    return app
