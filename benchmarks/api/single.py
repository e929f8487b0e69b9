"""stocksync's availability API: one SKU per GET, random over 100,000 SKUs."""

from __future__ import annotations

import logging
import sys
from typing import Final

from benchmarks.api._serve import scenario_main
from benchmarks.api.common import CHANNELS, NAMESPACE, NODES
from stocksync.api.server import run
from stocksync.config.settings import ApiSettings, ChannelSettings, Settings

__all__ = ["READY_PATH", "TITLE", "WRK_SCRIPT", "serve", "settings"]

TITLE: Final = "(b) stocksync GET /v1/availability/{sku}"
WRK_SCRIPT: Final = "single.lua"
READY_PATH: Final = "/readyz"


def settings(port: int, redis_url: str) -> Settings:
    """The API's settings for the benchmark data: open mode, access log off."""
    return Settings(
        redis_url=redis_url,
        redis_namespace=NAMESPACE,
        channels=[
            ChannelSettings(name=name, nodes=list(NODES), low_stock_threshold=5)
            for name in CHANNELS
        ],
        api=ApiSettings(host="127.0.0.1", port=port, access_log="off"),
    )


def serve(port: int, redis_url: str, skus: int, broker: str) -> None:
    """Run ``stocksync api`` (one process) until SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.exit(run(settings(port, redis_url)))


if __name__ == "__main__":
    scenario_main(serve)
