"""A worker healing a lost model: detect, stop writing, rebuild from the topics, resume.

Every script of the store checks the model's identity marker; when it is gone
(Redis restarted empty, flushed, failed over to an empty replica) the store
raises :class:`~stocksync.store.ModelLost` and nothing is read or written. The
stage that hit it calls :class:`Healer`: one worker takes the rebuild lock in
Redis and runs :func:`~stocksync.ops.rebuild.rebuild_generation`
(the operator's rebuild, from the source topics into a new generation, order
and RMA state included); the others wait until a live generation with its
marker is there. Then every stage goes on with its batch against the new
model; what it had consumed is in the topics, so the rebuild has it, and the
watermarks skip it when the stages see it again.

This needs the source topics to keep every event the model depends on
(retention, see the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from stocksync.agents.metrics import WorkerMetrics
from stocksync.config.settings import Settings
from stocksync.ops.access import OperateError
from stocksync.store import RedisStore, StoreUnavailable

__all__ = ["Healer"]

log = logging.getLogger("stocksync.healing")

#: Seconds the rebuild lock lives without renewal (renewed every third of it).
LOCK_TTL: Final = 30.0


class Healer:
    """Brings a lost model back: one worker rebuilds it under a lock in Redis, others wait."""

    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        *,
        worker_id: str,
        on_healed: Callable[[], None] = lambda: None,
        poll: float = 0.5,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.worker_id = worker_id
        self.on_healed = on_healed
        self.poll = poll
        #: True while the model is missing and this process waits for or runs a rebuild.
        self.healing = False
        self.rebuilds = 0
        #: ``stocksync_model_lost`` is 1 while healing.
        self.metrics = metrics
        self._lock = asyncio.Lock()

    async def __call__(self) -> None:
        """Return once the store is bound to a live model again (rebuilt here or elsewhere)."""
        async with self._lock:
            self.healing = True
            if self.metrics is not None:
                self.metrics.model_lost.set(1)
            try:
                await self._heal()
            finally:
                self.healing = False
                if self.metrics is not None:
                    self.metrics.model_lost.set(0)

    async def _heal(self) -> None:
        store = self.store
        waiting_said = False
        while True:
            try:
                if await store.model_present():
                    return  # another stage of this process healed it meanwhile
                namespace, generation = await store.live_namespace()
                if generation is not None:
                    await store.resolve()
                    log.warning("the model is back as generation %s under %s:; resuming",
                                generation, namespace)
                    self.on_healed()
                    return
                if await store.take_rebuild_lock(self.worker_id, LOCK_TTL):
                    try:
                        await self._rebuild()
                    finally:
                        await store.release_rebuild_lock(self.worker_id)
                    self.on_healed()
                    return
                if not waiting_said:
                    log.warning("the model is lost; another worker is rebuilding it, waiting")
                    waiting_said = True
            except StoreUnavailable as exc:
                log.warning("Redis failed while healing the model (%s); retrying", exc)
            except OperateError as exc:
                log.error("rebuilding the lost model failed: %s; retrying", exc)
            await asyncio.sleep(self.poll)

    async def _rebuild(self) -> None:
        from stocksync.ops.rebuild import rebuild_generation

        log.warning("the model is lost; this worker rebuilds it from the source topics")
        renew = asyncio.create_task(self._renew(), name="stocksync-rebuild-lock")
        try:
            result = await rebuild_generation(
                self.settings, self.store, who=f"worker {self.worker_id}",
                resend_dead_letters=True, lost=True,
            )
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
        self.rebuilds += 1
        log.warning(
            "rebuilt the lost model from %d message(s): %d SKUs, %d orders, %d RMAs;"
            " generation %s is live; resuming",
            result.messages, result.skus, result.orders, result.rmas, result.generation,
            extra={"generation": result.generation},
        )

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(LOCK_TTL / 3)
            try:
                if not await self.store.renew_rebuild_lock(self.worker_id, LOCK_TTL):
                    log.error("the rebuild lock expired while this worker was rebuilding")
            except StoreUnavailable as exc:
                log.warning("renewing the rebuild lock failed: %s", exc)
