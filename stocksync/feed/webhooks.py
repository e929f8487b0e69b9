"""Webhook deliveries: each webhook a consumer of the feed topic with its own position.

A :class:`Webhook` reads ``{prefix}.availability.v1`` from its position (kept in
Redis, :meth:`~stocksync.store.feed.FeedStore.positions`), keeps the messages
its ``channels`` and ``statuses`` select, and POSTs them in batches of at most
100 (one SKU is in one partition, read in order: per webhook, a SKU's messages
arrive in ``version`` order). A batch is tried until a ``2xx`` or
``max_attempts``, with exponential backoff and jitter; then it goes to
``{prefix}.feed.dlq`` with the reason, and the position moves on. Each
webhook runs in its own task with its own HTTP session: a slow or dead
endpoint delays only itself, never the Kafka feed or another webhook.

Signature: ``X-Stocksync-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``
with ``X-Stocksync-Timestamp`` (Unix seconds) and ``X-Stocksync-Delivery`` (one id
per batch, the same on every attempt). Secrets are never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
import uuid
from collections.abc import Sequence
from typing import Final

import aiohttp
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stocksync.codecs.feed import AvailabilityChanged, FeedDeadLetter, changed_decoder, encode
from stocksync.config.settings import FeedSettings, WebhookSettings
from stocksync.feed.metrics import FeedMetrics
from stocksync.readmodel.core import format_millis
from stocksync.store.feed import FeedStore, LeaseLost
from stocksync.store.protocol import StoreUnavailable

__all__ = [
    "DELIVERY_HEADER",
    "MAX_BATCH",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Attempt",
    "Webhook",
    "post",
    "sign",
]

log = logging.getLogger("stocksync.feed.webhooks")

DELIVERY_HEADER: Final = "X-Stocksync-Delivery"
TIMESTAMP_HEADER: Final = "X-Stocksync-Timestamp"
SIGNATURE_HEADER: Final = "X-Stocksync-Signature"
#: Messages per POST at most (the contract's bound).
MAX_BATCH: Final = 100
#: Seconds an endpoint has to answer.
TIMEOUT_SECONDS: Final = 10.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


class Attempt(msgspec.Struct, frozen=True):
    """The outcome of one POST: delivered, or why not."""

    ok: bool
    reason: str


async def post(
    session: aiohttp.ClientSession, hook: WebhookSettings, delivery_id: str, body: bytes
) -> Attempt:
    """POST ``body`` to ``hook`` once, signed; never raises for the endpoint's failures."""
    assert hook.secret is not None  # the loader reads every secret_file
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(hook.secret.reveal(), timestamp, body),
    }
    try:
        async with session.post(
            hook.url, data=body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
        ) as response:
            await response.read()
            if 200 <= response.status < 300:
                return Attempt(True, f"HTTP {response.status}")
            return Attempt(False, f"HTTP {response.status}")
    except TimeoutError:
        return Attempt(False, f"no answer within {TIMEOUT_SECONDS:.0f} s")
    except aiohttp.ClientError as exc:
        return Attempt(False, f"{type(exc).__name__}: {exc}")


class Webhook:
    """One webhook's consumer, queue and backoff."""

    def __init__(
        self,
        hook: WebhookSettings,
        settings: FeedSettings,
        *,
        topic: str,
        dlq_topic: str,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        store: FeedStore,
        metrics: FeedMetrics,
    ) -> None:
        self.hook = hook
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.consumer = consumer
        self.producer = producer
        self.store = store
        self.metrics = metrics
        self.base = settings.retry_base_ms / 1000
        self.cap = settings.retry_max_ms / 1000
        self._channels = None if hook.channels is None else frozenset(hook.channels)
        self._statuses = None if hook.statuses is None else frozenset(hook.statuses)
        self.pending = metrics.pending.labels(webhook=hook.name)

    def wants(self, message: AvailabilityChanged) -> bool:
        """Whether this webhook's ``channels`` and ``statuses`` select ``message``."""
        return (self._channels is None or message.channel in self._channels) and (
            self._statuses is None or message.status in self._statuses
        )

    def delay(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1``: exponential, capped, with jitter."""
        ceiling: float = min(self.cap, self.base * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _start(self) -> None:
        await self.consumer.start()
        partitions = sorted(self.consumer.partitions_for_topic(self.topic) or ())
        while not partitions:
            await asyncio.sleep(0.5)
            await self.consumer.topics()
            partitions = sorted(self.consumer.partitions_for_topic(self.topic) or ())
        assigned = [TopicPartition(self.topic, p) for p in partitions]
        self.consumer.assign(assigned)
        positions = await self.store.positions(self.hook.name)
        for tp in assigned:
            if tp.partition in positions:
                self.consumer.seek(tp, positions[tp.partition])
            else:
                await self.consumer.seek_to_beginning(tp)

    async def run(self) -> None:
        """Deliver until cancelled; raises :class:`LeaseLost` when fenced out."""
        await self._start()
        log.info("delivering the feed to webhook %s", self.hook.name,
                 extra={"webhook": self.hook.name})
        async with aiohttp.ClientSession() as session:
            while True:
                batches = await self.consumer.getmany(timeout_ms=500, max_records=MAX_BATCH)
                positions: dict[int, int] = {}
                selected: list[AvailabilityChanged] = []
                for tp, records in sorted(batches.items(), key=lambda x: x[0].partition):
                    for record in records:
                        try:
                            message = changed_decoder.decode(record.value or b"")
                        except msgspec.DecodeError:
                            log.error("skipping an undecodable feed message at %s[%d]@%d",
                                      tp.topic, tp.partition, record.offset)
                            continue
                        if self.wants(message):
                            selected.append(message)
                    if records:
                        positions[tp.partition] = records[-1].offset + 1
                if selected:
                    self.pending.set(len(selected))
                    await self.deliver(session, selected)
                    self.pending.set(0)
                await self._save(positions)

    async def deliver(
        self, session: aiohttp.ClientSession, messages: Sequence[AvailabilityChanged]
    ) -> bool:
        """POST ``messages`` until delivered or given up (then dead-lettered); whether delivered."""
        body = encode(list(messages))
        delivery_id = uuid.uuid4().hex
        name = self.hook.name
        attempt = 0
        while True:
            attempt += 1
            outcome = await post(session, self.hook, delivery_id, body)
            if outcome.ok:
                self.metrics.deliveries.labels(webhook=name, outcome="delivered").inc()
                return True
            self.metrics.deliveries.labels(webhook=name, outcome="failed").inc()
            if attempt >= self.hook.max_attempts:
                break
            wait = self.delay(attempt)
            log.warning(
                "webhook %s: delivery %s failed (%s), attempt %d of %d; next in %.1f s",
                name, delivery_id, outcome.reason, attempt, self.hook.max_attempts, wait,
                extra={"webhook": name},
            )
            await asyncio.sleep(wait)
        letter = FeedDeadLetter(
            webhook=name, reason=outcome.reason, attempts=attempt,
            failed_at=format_millis(time.time_ns() // 1_000_000), delivery_id=delivery_id,
            messages=list(messages),
        )
        await self._dead_letter(letter)
        self.metrics.deliveries.labels(webhook=name, outcome="dead_lettered").inc()
        log.error(
            "webhook %s: gave delivery %s (%d messages) up after %d attempts (%s); it is in %s",
            name, delivery_id, len(messages), attempt, outcome.reason, self.dlq_topic,
            extra={"webhook": name},
        )
        return False

    async def _dead_letter(self, letter: FeedDeadLetter) -> None:
        delay = 0.1
        while True:
            try:
                await self.producer.send_and_wait(
                    self.dlq_topic, encode(letter), key=letter.webhook.encode()
                )
                return
            except Exception as exc:  # the broker: retried until it takes it
                log.warning("sending to %s failed (%r); retrying", self.dlq_topic, exc)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    async def _save(self, positions: dict[int, int]) -> None:
        delay = 0.1
        while True:
            try:
                await self.store.save_positions(self.hook.name, positions)
                return
            except LeaseLost:
                raise
            except StoreUnavailable as exc:
                log.warning("saving webhook %s positions failed (%s); retrying",
                            self.hook.name, exc)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
