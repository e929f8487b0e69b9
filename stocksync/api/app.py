"""The aiohttp application factory of the availability API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Final

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler
from redis.backoff import NoBackoff
from redis.retry import Retry

from stocksync.api.auth import Authenticator
from stocksync.api.bodies import encode
from stocksync.api.handlers import AvailabilityHandlers, OperationalHandlers
from stocksync.api.metrics import ApiMetrics
from stocksync.api.middleware import UNMATCHED_ROUTE, AccessLog, RequestPipeline, SyncHandler
from stocksync.api.model import AvailabilityModel, ModelSync, SyncStatus
from stocksync.api.openapi import OPENAPI_PATH, openapi_document
from stocksync.config.connections import redis_client_options
from stocksync.config.settings import Settings
from stocksync.readmodel.keys import Keys

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
        app[MODEL], client, Keys(settings.redis_namespace), load_page=settings.api.load_page
    )
    app[REDIS] = client
    app[SYNC] = sync
    await sync.start()
    try:
        yield
    finally:
        await sync.stop()
        await client.aclose()


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
    routes: list[tuple[str, str, Handler | SyncHandler, bool]] = [
        ("POST", "/v1/availability/query", availability.query, True),
        # Any characters, newlines included, so that every bad SKU gets invalid_sku.
        ("GET", r"/v1/availability/{sku:[\s\S]*}", availability.get, True),
        ("GET", OPENAPI_PATH, ops.openapi, False),
        ("GET", "/healthz", ops.healthz, False),
        ("GET", "/readyz", ops.readyz, False),
        ("GET", "/metrics", ops.metrics, False),
    ]
    for method, path, handler, protected in routes:
        resource = app.router.add_resource(path)
        wrapped = pipeline.wrap(handler, resource.canonical, protected=protected)
        if method == "GET":
            resource.add_route("HEAD", wrapped)
        resource.add_route(method, wrapped)
    # Last, so that it only takes what no route above does.
    app.router.add_route(
        "*",
        r"/{path:[\s\S]*}",
        pipeline.wrap(pipeline.unmatched, UNMATCHED_ROUTE, protected=False),
    )
    return app
