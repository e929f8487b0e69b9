"""A Faust web view reading a Faust Table, the Faust-native way (``app.table_route``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import msgspec
import uvloop

from benchmarks.api._serve import scenario_main
from benchmarks.api.common import plain_document, projections

__all__ = ["READY_PATH", "TITLE", "WRK_SCRIPT", "serve"]

TITLE: Final = "(e) Faust web view over a Faust Table"
WRK_SCRIPT: Final = "single.lua"
READY_PATH: Final = "/readyz/"
#: SKUs per message that fills the table (one message per SKU would take minutes).
_FILL_BATCH: Final = 1000


def serve(port: int, redis_url: str, skus: int, broker: str) -> None:
    """Run a Faust worker whose web server answers from its table, until SIGTERM."""
    import faust  # imported here: Faust configures logging and the loop on import paths

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = faust.App(
        "bench-api-faust",
        broker=broker,
        store="memory://",
        web_enabled=True,
        web_port=port,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        topic_partitions=1,
        key_serializer="raw",
        value_serializer="raw",
        broker_session_timeout=6,
        broker_rebalance_timeout=6,
        broker_heartbeat_interval=1,
    )
    table = app.Table("availability", default=None, partitions=1)
    fills = app.topic("bench-api-fill", partitions=1, internal=True)  # created with 1 partition

    @app.agent(fills)
    async def fill(stream: Any) -> None:
        async for batch in stream:
            for sku, doc in msgspec.msgpack.decode(batch):
                table[sku] = doc

    async def produce() -> None:
        chunk: list[tuple[str, bytes]] = []
        for proj in projections(skus):
            chunk.append((proj.sku, plain_document(proj.channels[0])))
            if len(chunk) == _FILL_BATCH:
                await fills.send(value=msgspec.msgpack.encode(chunk))
                chunk = []
        if chunk:
            await fills.send(value=msgspec.msgpack.encode(chunk))

    app.task(produce)

    @app.page("/v1/availability/{sku}")
    @app.table_route(table=table, match_info="sku")
    async def availability(web: Any, request: Any, sku: str) -> Any:
        doc = table.get(sku)
        if doc is None:
            return web.json({"error": {"code": "unknown_sku", "message": "not known"}}, status=404)
        return web.bytes(doc, content_type="application/json")

    @app.page("/readyz/")
    async def readyz(web: Any, request: Any) -> Any:
        return web.json({"skus": len(table)}, status=200 if len(table) >= skus else 503)

    faust.Worker(app, loglevel=logging.WARNING, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    scenario_main(serve)
