"""A naive availability service: aiohttp on uvloop, one Redis GET per request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import redis.asyncio as aioredis
import uvloop
from aiohttp import web

from benchmarks.api._serve import scenario_main
from benchmarks.api.common import naive_key

__all__ = ["READY_PATH", "TITLE", "WRK_SCRIPT", "serve"]

TITLE: Final = "(d) aiohttp + one Redis GET per request"
WRK_SCRIPT: Final = "single.lua"
READY_PATH: Final = "/healthz"
_REDIS: Final = web.AppKey("redis", aioredis.Redis)
_NOT_FOUND: Final = b'{"error":{"code":"unknown_sku","message":"not known"}}'


async def _availability(request: web.Request) -> web.Response:
    sku = request.match_info["sku"]
    channel = request.query.get("channel", "web")
    doc = await request.app[_REDIS].get(naive_key(sku, channel))
    if doc is None:
        return web.Response(status=404, body=_NOT_FOUND, content_type="application/json")
    return web.Response(body=doc, content_type="application/json")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def serve(port: int, redis_url: str, skus: int, broker: str) -> None:
    """Serve availability straight from Redis until interrupted."""

    async def client(app: web.Application) -> AsyncIterator[None]:
        app[_REDIS] = aioredis.Redis.from_url(redis_url, max_connections=128)
        yield
        await app[_REDIS].aclose()

    app = web.Application()
    app.cleanup_ctx.append(client)
    app.router.add_get("/v1/availability/{sku}", _availability)
    app.router.add_get("/healthz", _healthz)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    scenario_main(serve)
