"""API benchmarks: stocksync's availability API against bare aiohttp, Redis-per-request and Faust.

Run ``python -m benchmarks.api`` (``--json`` for machine-readable output). It
starts one ``redis-server`` on a free loopback port (and an embedded broker for
the Faust scenario), seeds it, then runs every scenario's server in a fresh
subprocess pinned to one core while ``wrk`` loads it from another, so each
figure and its baselines come from the same run on the same services:

``bare``    bare aiohttp on uvloop answering a constant 80-byte JSON body (the ceiling)
``single``  stocksync's API, ``GET /v1/availability/{sku}`` over 100,000 random SKUs
``batch``   stocksync's API, ``POST /v1/availability/query`` with 50 random SKUs
``naive``   aiohttp on uvloop doing one Redis GET per request
``faust``   a Faust web view reading a Faust Table (``app.table_route``)
``memory``  stocksync's API loading 1,000,000 SKUs x 2 channels: RSS and load time

Each scenario module exposes ``TITLE``, ``WRK_SCRIPT``, ``READY_PATH`` and
``serve(port, redis_url, skus, broker)``; ``python -m benchmarks.api.<name>``
runs that server alone.
"""

__all__: list[str] = []
