"""Bare aiohttp on uvloop answering a constant 80-byte JSON body: the ceiling."""

from __future__ import annotations

from typing import Final

import uvloop
from aiohttp import web

from benchmarks.api._serve import scenario_main

__all__ = ["BODY", "READY_PATH", "TITLE", "WRK_SCRIPT", "serve"]

TITLE: Final = "(a) bare aiohttp, constant 80-byte JSON"
WRK_SCRIPT: Final = "single.lua"  # the same requests as (b); the path is ignored
READY_PATH: Final = "/healthz"
BODY: Final = b'{"sku":"SKU-0000001","channel":"web","available":118,"status":"in_stock","v":10}'
assert len(BODY) == 80


async def _constant(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


def serve(port: int, redis_url: str, skus: int, broker: str) -> None:
    """Serve the constant body on every path until interrupted."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", _constant)
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
