"""stocksync's availability API: 50 random SKUs per POST /v1/availability/query."""

from __future__ import annotations

from typing import Final

from benchmarks.api._serve import scenario_main
from benchmarks.api.single import serve

__all__ = ["BATCH", "READY_PATH", "TITLE", "WRK_SCRIPT", "serve"]

TITLE: Final = "(c) stocksync POST /v1/availability/query, 50 SKUs"
WRK_SCRIPT: Final = "batch.lua"
READY_PATH: Final = "/readyz"
#: SKUs per request.
BATCH: Final = 50

if __name__ == "__main__":
    scenario_main(serve)
