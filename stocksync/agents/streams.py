"""The Faust agents of the worker: one translator per source topic, one applier on effects.

Each agent is a thin loop over ``take_events``: it turns Faust events into
plain :class:`~stocksync.agents.stages.SourceMessage` values (or effects
payloads) and hands the batch to its stage. Faust acks a batch when the loop
body returns - and also when it is interrupted, in a ``finally``. So a batch is
run shielded from cancellation: on shutdown an in-flight batch may finish
within the shutdown timeout; if it cannot (Redis down), the process exits at
once without committing, and the batch is redelivered on restart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust

from stocksync.agents.app import raw_topic
from stocksync.agents.dlq import DeadLetterOut, record_size
from stocksync.agents.incarnations import IncarnationSource
from stocksync.agents.metrics import WorkerMetrics
from stocksync.agents.owners import Owners
from stocksync.agents.stages import (
    Applier,
    Healer,
    MessageTooLarge,
    SourceMessage,
    Translator,
    header_text,
    is_too_large,
)
from stocksync.agents.topics import TopicNames
from stocksync.config.settings import Settings
from stocksync.readmodel import core
from stocksync.store import RedisStore
from stocksync.store.holds import HoldStore

__all__ = ["EXIT_ABANDONED_BATCH", "FaustOutbox", "WorkerStages", "register"]

log = logging.getLogger("stocksync.agents")

#: Exit status when shutdown had to abandon a batch it could not finish (nothing committed).
EXIT_ABANDONED_BATCH = 75


class FaustOutbox:
    """Sends effects and dead letters through the app's producer and awaits delivery.

    A message refused for its size, by the producer (Faust raises
    ``ProducerSendError`` at once) or by the broker (its delivery fails), is
    reported as :class:`MessageTooLarge` once the others were delivered; any
    other failure is raised as it is, for the caller to retry.
    """

    def __init__(self, effects: faust.TopicT, dlq: faust.TopicT) -> None:
        self.effects = effects
        self.dlq = dlq

    async def send_effects(self, batches: dict[int, bytes]) -> None:
        """One message per destination partition, explicitly partitioned."""
        await _send_all(
            [
                (len(payload), functools.partial(self.effects.send, value=payload, partition=n))
                for n, payload in batches.items()
            ]
        )

    async def send_dead_letters(self, letters: Sequence[DeadLetterOut]) -> None:
        """One message per rejected event, keyed like its source message."""
        await _send_all(
            [
                (
                    record_size(letter.key, letter.value, letter.headers),
                    functools.partial(
                        self.dlq.send, key=letter.key, value=letter.value, headers=letter.headers
                    ),
                )
                for letter in letters
            ]
        )


async def _send_all(sends: Sequence[tuple[int, Callable[[], Awaitable[Any]]]]) -> None:
    """Start every send, await every delivery; then raise the first failure, if any."""
    started: list[tuple[int, Any]] = []
    refused: list[tuple[int, int]] = []
    failure: BaseException | None = None
    for n, (size, send) in enumerate(sends):
        try:
            started.append((n, await send()))
        except Exception as exc:
            if not is_too_large(exc):
                failure = failure or exc
                break  # the rest would fail alike; the caller sends all again
            refused.append((n, size))
    for n, fut in started:
        try:
            await fut
        except Exception as exc:
            if is_too_large(exc):
                refused.append((n, sends[n][0]))
            else:
                failure = failure or exc
    if failure is not None:
        raise failure
    if refused:
        raise MessageTooLarge(min(size for _, size in refused), sorted(n for n, _ in refused))


class WorkerStages:
    """The stages of one worker (a translator per source topic, the applier) and what they share."""

    def __init__(
        self,
        *,
        settings: Settings,
        topics: TopicNames,
        effects_partitions: int,
        store: RedisStore,
        metrics: WorkerMetrics,
        outbox: FaustOutbox | None = None,
        heal: Healer | None = None,
        incarnations: IncarnationSource | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        self.settings = settings
        #: Who owns each dead letter, shared by the translators.
        self.owners = Owners(settings.dlq)
        #: The largest message the translators send (the broker's limit, see
        #: :func:`stocksync.agents.topics.message_limit`; the setting when not known).
        self.max_message_bytes = max_message_bytes or settings.worker.max_message_bytes
        self.topics = topics
        self.metrics = metrics
        self.store = store
        self.window_ms = int(settings.worker.dedup_window_hours * 3_600_000)
        self.effects_partitions = effects_partitions
        self.outbox = outbox
        self.incarnations = incarnations
        self.translators: dict[str, Translator] = {}
        #: Converts checkout holds for the orders translator, on the live generation's keys.
        self.holds = HoldStore(
            store.client, lambda: store.keys, changes_maxlen=settings.worker.changes_maxlen,
            wait_replicas=store.wait_replicas, wait_timeout_ms=store.wait_timeout_ms,
        )
        #: Brings a lost model back before a stage tries again (see stocksync.daemon.healing).
        self.heal = heal
        self.applier = Applier(
            store=store,
            topology=core.topology_of(settings),
            window_ms=self.window_ms,
            metrics=metrics,
            heal=heal,
        )

    def translator(self, kind: str) -> Translator:
        """The translator of one source topic kind."""
        found = self.translators.get(kind)
        if found is None:
            assert self.outbox is not None
            found = self.translators[kind] = Translator(
                kind=kind,
                effects_partitions=self.effects_partitions,
                outbox=self.outbox,
                store=None if kind == "stock" else self.store,
                window_ms=self.window_ms,
                metrics=self.metrics,
                chunk_events=self.settings.worker.batch_size,
                heal=self.heal,
                incarnations=self.incarnations,
                max_message_bytes=self.max_message_bytes,
                holds=self.holds if kind == "orders" else None,
                owners=self.owners,
            )
        return found

    async def run_batch(self, stage: str, size: int, work: Callable[[], Awaitable[int]]) -> None:
        """Run one batch to completion, shielded from cancellation (see the module docstring)."""
        started = time.perf_counter()
        task = asyncio.ensure_future(work())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            timeout = self.settings.worker.shutdown_timeout
            log.info(
                "stopping: letting the in-flight %s batch finish (%.0fs at most)", stage, timeout
            )
            try:
                await asyncio.wait_for(task, timeout)
            except BaseException:
                log.error(
                    "the in-flight %s batch could not finish; exiting without committing so "
                    "it is redelivered on restart",
                    stage,
                )
                logging.shutdown()
                os._exit(EXIT_ABANDONED_BATCH)
            raise
        except Exception:
            # The stages retry their I/O themselves; anything else is a bug. Never let it
            # escape (that would ack the batch): stop the process and let it be redelivered.
            log.exception("unexpected error in the %s stage; exiting without committing", stage)
            logging.shutdown()
            os._exit(EXIT_ABANDONED_BATCH)
        self.metrics.batch_size.labels(stage).observe(size)
        self.metrics.batch_seconds.labels(stage).observe(time.perf_counter() - started)


def _source_message(event: Any) -> SourceMessage:
    message = event.message
    value = event.value
    return SourceMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=value if value is None or isinstance(value, bytes) else bytes(value),
        timestamp_ms=int((message.timestamp or 0) * 1000),
        correlation_id=header_text(message.headers, "correlation_id"),
    )


def register(app: faust.App, stages: WorkerStages) -> None:
    """Declare the topics and agents of the worker on ``app``."""
    settings = stages.settings
    names = stages.topics
    size = settings.worker.batch_size
    within = settings.worker.batch_window_ms / 1000
    apply_within = settings.worker.apply_window_ms / 1000
    effects_topic = raw_topic(app, names.effects)
    stages.outbox = FaustOutbox(effects_topic, raw_topic(app, names.dlq))
    # The producer refuses anything larger than its own limit, whatever the broker takes.
    producer_limit = int(app.conf.producer_max_request_size)
    if producer_limit < stages.max_message_bytes:
        log.info(
            "messages sent are at most %d bytes (the producer's max_request_size)",
            producer_limit,
        )
        stages.max_message_bytes = producer_limit

    def translator_agent(kind: str, topic_name: str) -> None:
        translator = stages.translator(kind)

        async def translate(stream: Any) -> None:
            async for events in stream.take_events(size, within):
                messages = [_source_message(e) for e in events]
                await stages.run_batch(
                    kind,
                    len(messages),
                    lambda m=messages: translator.process(m),  # type: ignore[misc]
                )

        app.agent(raw_topic(app, topic_name), name=f"stocksync.translate.{kind}")(translate)

    translator_agent("stock", names.stock)
    translator_agent("orders", names.orders)
    translator_agent("returns", names.returns)

    applier = stages.applier

    async def apply(stream: Any) -> None:
        async for events in stream.take_events(size, apply_within):
            payloads = [e.value for e in events if e.value]
            await stages.run_batch(
                "apply",
                len(payloads),
                lambda p=payloads: applier.process(p),  # type: ignore[misc]
            )

    app.agent(effects_topic, name="stocksync.apply")(apply)

    async def _forget(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Another worker may write these SKUs now; the compare-and-set would catch a
        # stale cache, but dropping it avoids the wasted round trip.
        applier.forget()

    app.on_partitions_revoked.connect(_forget)
