"""Kafka and Redis access shared by the operator commands, and their audit log.

Exceptions::

    OperateError          an operator command cannot go on; the message says what to do
     └── Refused          the command would be unsafe now (workers running, bad input)

Topics are read with a plain aiokafka consumer: no consumer group, assigned
to every partition, from the earliest offset up to the end offsets read at
start. Some brokers (Tansu) under-report end offsets, so reading goes on past
them until a poll has returned nothing for ``idle`` seconds. A topic that does
not exist is never named to the broker (that would create it): topics are
found by listing them all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from stocksync.agents.stages import header_text
from stocksync.config.connections import kafka_client_options, redis_client_options
from stocksync.config.loader import bootstrap_servers
from stocksync.config.settings import Settings
from stocksync.errors import StocksyncError
from stocksync.readmodel import core
from stocksync.store import RedisStore
from stocksync.store.layout import Keys

__all__ = [
    "AUDIT_LOGGER",
    "OperateError",
    "Record",
    "Refused",
    "audit",
    "existing_topics",
    "kafka_options",
    "open_producer",
    "open_store",
    "read_topics",
]

log = logging.getLogger("stocksync.operate")

#: The logger of the audit lines (JSON, like every log line).
AUDIT_LOGGER: Final = "stocksync.audit"
_audit = logging.getLogger(AUDIT_LOGGER)
#: Records asked for per poll.
_POLL_RECORDS: Final = 5000
_POLL_MS: Final = 200


class OperateError(StocksyncError):
    """An operator command cannot go on; the message says what to do."""


class Refused(OperateError):
    """The command would be unsafe now, or its input is invalid."""


class Record:
    """One Kafka record as read by an operator command."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp_ms", "topic", "value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.timestamp_ms = timestamp_ms
        self.headers = headers

    def header(self, name: str) -> str | None:
        """The first header ``name`` as text, or None."""
        return header_text(self.headers, name)


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Connection options every Kafka client of these commands gets, security included."""
    return {
        "bootstrap_servers": bootstrap_servers(settings.broker),
        "request_timeout_ms": 30_000,
        **kafka_client_options(settings),
    }


def open_store(settings: Settings) -> RedisStore:
    """The configured Redis as a store, bound to nothing yet (call ``resolve``)."""
    return RedisStore.from_url(
        settings.redis_url,
        Keys(settings.redis_namespace),
        client_options={
            "socket_timeout": 30, "socket_connect_timeout": 5, **redis_client_options(settings)
        },
        topology=core.topology_of(settings),
        cluster=settings.redis_cluster,
        changes_maxlen=settings.worker.changes_maxlen,
        state_ttl_seconds=settings.worker.state_ttl_days * 86_400,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )


def _unreachable(settings: Settings, exc: BaseException) -> OperateError:
    return OperateError(
        f"no Kafka broker answered at {','.join(bootstrap_servers(settings.broker))!r} ({exc});"
        " start it or fix the broker setting (STOCKSYNC_BROKER)"
    )


async def open_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """A started producer that waits for every in-sync replica (acks=all); ``options`` add."""
    producer = AIOKafkaProducer(
        **kafka_options(settings),
        client_id="stocksync-operate",
        acks="all",
        linger_ms=5,
        **options,
    )
    try:
        await producer.start()
    except (KafkaConnectionError, OSError) as exc:
        await producer.stop()
        raise _unreachable(settings, exc) from exc
    return producer


async def existing_topics(settings: Settings) -> set[str]:
    """Every topic of the cluster (listing them names none, so creates none)."""
    consumer = AIOKafkaConsumer(**kafka_options(settings), client_id="stocksync-operate")
    try:
        await consumer.start()
        return set(await consumer.topics())
    except (KafkaConnectionError, OSError) as exc:
        raise _unreachable(settings, exc) from exc
    finally:
        await consumer.stop()


async def read_topics(
    settings: Settings,
    topics: Sequence[str],
    *,
    idle: float = 1.0,
    stall: float = 15.0,
    since_ms: int | None = None,
) -> AsyncIterator[tuple[list[Record], dict[str, int]]]:
    """Batches of records of ``topics`` from the earliest offset to the end, with progress.

    Yields ``(records, progress)`` where progress has ``read`` (records so far)
    and ``expected`` (the sum of end minus start offsets at start). Missing
    topics are skipped with a warning. Stops once every partition has reached its
    end offset and a poll has found nothing for ``idle`` seconds, or when
    nothing came for ``stall`` seconds before that (a warning says where).

    With ``since_ms`` it also stops while producers keep the topics busy: once
    every partition has either delivered a record produced at or after
    ``since_ms`` (everything before it was there when reading began), or
    reached its end offset and been quiet for ``idle`` seconds.
    """
    consumer = AIOKafkaConsumer(
        **kafka_options(settings),
        client_id="stocksync-operate",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=_POLL_RECORDS,
    )
    try:
        await consumer.start()
    except (KafkaConnectionError, OSError) as exc:
        await consumer.stop()
        raise _unreachable(settings, exc) from exc
    try:
        existing = await consumer.topics()  # all topics: naming a missing one would create it
        assigned: list[TopicPartition] = []
        for topic in topics:
            if topic not in existing:
                log.warning("topic %s does not exist; nothing to read there", topic,
                            extra={"topic": topic})
                continue
            partitions = consumer.partitions_for_topic(topic) or set()
            assigned += [TopicPartition(topic, p) for p in sorted(partitions)]
        if not assigned:
            return
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        starts = await consumer.beginning_offsets(assigned)
        ends = await consumer.end_offsets(assigned)
        progress = {
            "read": 0,
            "expected": sum(max(0, ends[tp] - starts[tp]) for tp in assigned),
        }
        positions = {tp: starts[tp] for tp in assigned}
        quiet_since = time.monotonic()
        heard = dict.fromkeys(assigned, quiet_since)  # when each partition last gave records
        caught_up: set[TopicPartition] = set()  # gave a record produced at or after since_ms
        while True:
            if since_ms is not None:
                now = time.monotonic()
                if all(
                    tp in caught_up or (positions[tp] >= ends[tp] and now - heard[tp] >= idle)
                    for tp in assigned
                ):
                    return
            batches = await consumer.getmany(timeout_ms=_POLL_MS, max_records=_POLL_RECORDS)
            records: list[Record] = []
            for tp, messages in batches.items():
                for m in messages:
                    records.append(
                        Record(m.topic, m.partition, m.offset, m.key, m.value,
                               int(m.timestamp or 0), list(m.headers or ()))
                    )
                if messages:
                    positions[tp] = messages[-1].offset + 1
                    heard[tp] = time.monotonic()
                    if since_ms is not None and int(messages[-1].timestamp or 0) >= since_ms:
                        caught_up.add(tp)
            if records:
                progress["read"] += len(records)
                quiet_since = time.monotonic()
                yield records, dict(progress)
                continue
            reached = all(positions[tp] >= ends[tp] for tp in assigned)
            waited = time.monotonic() - quiet_since
            if reached and waited >= idle:
                return
            if waited >= stall:
                short = [f"{tp.topic}[{tp.partition}]@{positions[tp]}<{ends[tp]}"
                         for tp in assigned if positions[tp] < ends[tp]]
                log.warning("nothing more arrived for %.0f s; stopping short of the end offsets"
                            " at start: %s", stall, ", ".join(short))
                return
    except KafkaError as exc:
        raise OperateError(f"reading {', '.join(topics)} failed: {exc!r}") from exc
    finally:
        await consumer.stop()


def audit(who: str, what: str, count: int, **details: Any) -> None:
    """One audit line on the ``stocksync.audit`` logger: who did what, when, to how many."""
    when = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    _audit.info(
        "%s by %s: %d", what, who, count,
        extra={"who": who, "what": what, "when": when, "count": count, **details},
    )

