"""The aiohttp application factory of the availability API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler
from redis.backoff import NoBackoff
from redis.retry import Retry

from stocksync.api.auth import Authenticator
from stocksync.api.bodies import encode
from stocksync.api.dispatch import AVAILABILITY_PREFIX, HOT_ROUTES, QUERY_PATH, HotRoutes
from stocksync.api.handlers import AvailabilityHandlers, OperationalHandlers
from stocksync.api.metrics import ApiMetrics
from stocksync.api.middleware import UNMATCHED_ROUTE, AccessLog, RequestPipeline, SyncHandler
from stocksync.api.model import AvailabilityModel, ModelSync, SyncStatus
from stocksync.api.openapi import OPENAPI_PATH, openapi_document
from stocksync.config.connections import redis_client_options
from stocksync.config.settings import Settings
from stocksync.store import RedisStore
from stocksync.store.layout import Keys

__all__ = ["METRICS", "MODEL", "REDIS", "SETTINGS", "SYNC", "create_app"]

log = logging.getLogger("stocksync.api")

SETTINGS: Final = web.AppKey("settings", Settings)
MODEL: Final = web.AppKey("model", AvailabilityModel)
METRICS: Final = web.AppKey("metrics", ApiMetrics)
REDIS: Final = web.AppKey("redis", aioredis.Redis)
SYNC: Final = web.AppKey("sync", ModelSync)

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
    client = aioredis.Redis.from_url(
        settings.redis_url,
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
    await sync.start()
    try:
        yield
    finally:
        await sync.stop()
        await client.aclose()


def _sku_from_path(
    get: Callable[[web.Request, str], Awaitable[web.StreamResponse]],
) -> Handler:
    """``get`` as a routed handler: the SKU from the router's match."""

    async def routed(request: web.Request) -> web.StreamResponse:
        return await get(request, request.match_info["sku"])

    return routed


def create_app(settings: Settings) -> web.Application:
    """The availability API for ``settings``; it loads its model from Redis when started."""
    model = AvailabilityModel([c.name for c in settings.channels])
    app = web.Application(client_max_size=settings.api.max_body_bytes)

    def status() -> SyncStatus | None:
        sync = app.get(SYNC)
        return None if sync is None else sync.status()

    metrics = ApiMetrics(status)
    pipeline = RequestPipeline(
        metrics=metrics,
        authenticator=Authenticator(settings.api.tokens),
        access_log=AccessLog(settings.api.access_log, settings.api.access_log_sample),
    )
    app[SETTINGS] = settings
    app[MODEL] = model
    app[METRICS] = metrics
    app.cleanup_ctx.append(_model_sync)

    availability = AvailabilityHandlers(
        model, max_skus=settings.api.max_skus, max_body_bytes=settings.api.max_body_bytes
    )
    ops = OperationalHandlers(status, metrics, encode(openapi_document(settings)))
    # The hot endpoints: HotRoutes serves them ahead of the router (see
    # stocksync.api.dispatch), and the router serves what HotRoutes leaves to it.
    query_resource = app.router.add_resource(QUERY_PATH)
    query = pipeline.wrap(availability.query, query_resource.canonical, protected=True)
    query_resource.add_route("POST", query)
    # Any characters, newlines included, so that every bad SKU gets invalid_sku.
    sku_resource = app.router.add_resource(AVAILABILITY_PREFIX + r"{sku:[\s\S]*}")
    get = pipeline.wrap(availability.get, sku_resource.canonical, protected=True)
    routed_get = _sku_from_path(get)
    sku_resource.add_route("HEAD", routed_get)
    sku_resource.add_route("GET", routed_get)
    app[HOT_ROUTES] = HotRoutes(get, query)
    routes: list[tuple[str, Handler | SyncHandler]] = [
        (OPENAPI_PATH, ops.openapi),
        ("/healthz", ops.healthz),
        ("/readyz", ops.readyz),
        ("/metrics", ops.metrics),
    ]
    for path, handler in routes:
        resource = app.router.add_resource(path)
        wrapped = pipeline.wrap(handler, resource.canonical, protected=False)
        resource.add_route("HEAD", wrapped)
        resource.add_route("GET", wrapped)
    # Last, so that it only takes what no route above does.
    app.router.add_route(
        "*",
        r"/{path:[\s\S]*}",
        pipeline.wrap(pipeline.unmatched, UNMATCHED_ROUTE, protected=False),
    )
    return app
