"""A worker whose model is lost says so on ``stocksync_model_lost`` until it is back."""

from __future__ import annotations

import asyncio

from stocksync.agents.metrics import WorkerMetrics
from stocksync.config.settings import Settings
from stocksync.daemon.healing import Healer
from stocksync.ops.access import open_store

GENERATION = "g20261201T120000000Z"


def test_model_lost_is_1_while_the_worker_waits_for_the_rebuild(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, redis_namespace="heal")
    metrics = WorkerMetrics()

    def lost() -> float | None:
        return metrics.registry.get_sample_value("stocksync_model_lost")

    async def scenario() -> None:
        store, other = open_store(settings), open_store(settings)
        try:
            # Another worker holds the rebuild lock: this one waits for its rebuild.
            assert await other.take_rebuild_lock("another-worker", 30)
            healer = Healer(settings, store, worker_id="w1", poll=0.05, metrics=metrics)
            assert lost() == 0
            healing = asyncio.ensure_future(healer())
            async with asyncio.timeout(30):
                while not healer.healing:
                    await asyncio.sleep(0.01)
            assert lost() == 1
            await asyncio.sleep(0.2)  # several looks at Redis: still lost, still 1
            assert lost() == 1 and not healing.done()
            await other.begin_generation(GENERATION)  # the other worker's rebuild is live
            await asyncio.wait_for(healing, 30)
            assert lost() == 0
            assert await store.model_present()
        finally:
            await store.close()
            await other.close()

    asyncio.run(scenario())
