"""Topic incarnations: a topic deleted and created again is never taken for duplicates.

Watermarks are kept per source partition (``SourceRef.src``), and a topic that is
recreated (a broker reset, a topic deleted and created again) starts its offsets
at 0 again: without more, its new events would sit under the old watermarks and
be skipped. Kafka's topic ids would tell the incarnations apart, but aiokafka
speaks Metadata up to v5 (ids came with v10), so the worker keeps its own record.

For every source partition Redis holds one record
(:class:`~stocksync.store.incarnations.Incarnation`): its number
(0 for the first the worker saw, which keeps the watermark keys of older
releases), and one record read in it (offset and CRC-32 of key and value).
Whenever a worker starts reading a partition (first batch after an assignment)
or aiokafka reset the partition's position by policy while running (no committed
offset, or a committed offset out of range; see
:func:`stocksync.compat.aiokafka.on_offset_reset`), it reads the record at that
offset back from the broker:

- the same key and value are there, or the offset is gone below the log start
  (retention): the same incarnation;
- another record is there, or the partition now ends before that offset: a new
  incarnation. Its number goes up by one, it becomes part of the watermark key
  (``orders.v1/3#1``), it is logged and counted
  (``stocksync_topic_incarnations_total``), and its events are applied.

The record moves on with the stream (written at most every :data:`FLUSH_EVERY`
seconds, off the per-event path), so retention rarely removes it.
Watermarks of an earlier incarnation are keys no new effect uses; they stay in
the positions they were written in (a few bytes each).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from stocksync.agents.metrics import WorkerMetrics
from stocksync.agents.stages import SourceMessage
from stocksync.compat import aiokafka as compat_aiokafka
from stocksync.config.connections import kafka_client_options
from stocksync.config.loader import bootstrap_servers
from stocksync.config.settings import Settings
from stocksync.store.incarnations import TP, Incarnation, IncarnationRecords

__all__ = [
    "FLUSH_EVERY",
    "IncarnationSource",
    "KafkaRecordReader",
    "RecordReader",
    "RecordSeen",
    "StoredIncarnations",
    "TopicIncarnations",
    "record_crc",
]

log = logging.getLogger("stocksync.incarnations")

#: Seconds between writes of the record each partition has reached.
FLUSH_EVERY = 5.0


def record_crc(key: bytes | None, value: bytes | None) -> int:
    """CRC-32 of a record's key, then its value (an absent one counts as empty)."""
    return zlib.crc32(value or b"", zlib.crc32(key or b""))


class RecordSeen(msgspec.Struct, frozen=True):
    """The first record a partition holds at or after some offset."""

    offset: int
    crc: int


class RecordReader(Protocol):
    """Reads back, per partition, the first record at or after an offset."""

    async def first_records(self, wanted: dict[TP, int]) -> dict[TP, RecordSeen | None]:
        """None for a partition with no record at or after its offset (it ends before)."""


class IncarnationSource(Protocol):
    """What a translator asks: make sure a batch's partitions are known, then their numbers."""

    async def prepare(self, messages: Sequence[SourceMessage]) -> None:
        """Know the incarnation of every partition in ``messages`` (may read the broker)."""

    def of(self, topic: str, partition: int) -> int:
        """The incarnation number of a partition :meth:`prepare` saw."""


class TopicIncarnations:
    """The worker's view of its source partitions' incarnations, kept in Redis."""

    def __init__(
        self,
        *,
        records: IncarnationRecords,
        reader: RecordReader,
        topics: Iterable[str],
        metrics: WorkerMetrics | None = None,
        flush_every: float = FLUSH_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.records = records
        self.reader = reader
        self.topics = frozenset(topics)
        self.metrics = metrics or WorkerMetrics()
        self.flush_every = flush_every
        self.clock = clock
        #: Partitions checked since they were assigned, with their incarnation.
        self._known: dict[TP, Incarnation] = {}
        #: The last message of each known partition read since the last flush.
        self._latest: dict[TP, SourceMessage] = {}
        #: Partitions aiokafka reset by policy (added from the consumer's thread).
        self._reset: set[TP] = set()
        #: Known partitions to check again (a rebalance happened since).
        self._stale: set[TP] = set()
        self._flushed = clock()
        self._unwatch: Callable[[], None] | None = None

    # -- hooks -----------------------------------------------------------------------------

    def watch_resets(self) -> bool:
        """Hear of aiokafka's offset resets; False when the aiokafka adjustments stand down."""
        if self._unwatch is None:
            self._unwatch = compat_aiokafka.on_offset_reset(self._on_reset)
        return compat_aiokafka.ACTIVE

    def close(self) -> None:
        """Stop hearing of resets."""
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None

    def _on_reset(self, topic: str, partition: int, offset: int) -> None:
        # Called on the consumer's thread: a set add is atomic, prepare() pops.
        if topic in self.topics:
            self._reset.add((topic, partition))

    def forget(self) -> None:
        """Check every partition again before its next batch (after a rebalance).

        The numbers stay known meanwhile: a batch already translating keeps them.
        """
        self._stale.update(self._known)

    # -- the translators' side -------------------------------------------------------------

    def of(self, topic: str, partition: int) -> int:
        """The incarnation number of a partition :meth:`prepare` saw."""
        return self._known[(topic, partition)].n

    async def prepare(self, messages: Sequence[SourceMessage]) -> None:
        """Check the partitions of ``messages`` not checked since they were assigned or reset."""
        last: dict[TP, SourceMessage] = {}
        for msg in messages:
            last[(msg.topic, msg.partition)] = msg
        reset = self._reset
        suspects: set[TP] = set()
        while reset:
            suspects.add(reset.pop())
        stale = self._stale
        pending = [tp for tp in last if tp not in self._known or tp in suspects or tp in stale]
        if pending:
            try:
                await self._check(pending, last, suspects)
            except BaseException:
                self._reset.update(suspects)  # checked again when the batch is retried
                raise
            stale.difference_update(pending)
        self._reset.update(tp for tp in suspects if tp not in last)
        self._latest.update(last)
        if self.clock() - self._flushed >= self.flush_every:
            await self.flush()

    async def flush(self) -> None:
        """Store how far each known partition has been read."""
        latest, self._latest = self._latest, {}
        self._flushed = self.clock()
        records = {
            tp: Incarnation(self._known[tp].n, msg.offset, record_crc(msg.key, msg.value))
            for tp, msg in latest.items()
            if tp in self._known
        }
        if records:
            await self._store(records)

    async def _check(
        self, pending: list[TP], last: dict[TP, SourceMessage], suspects: set[TP]
    ) -> None:
        stored = await self._load(pending)
        compare: dict[TP, Incarnation] = {}
        fresh: dict[TP, Incarnation] = {}
        for tp in pending:
            record = stored.get(tp)
            known = self._known.get(tp)
            seen = self._latest.get(tp)
            if (
                tp in suspects
                and known is not None
                and seen is not None
                and (record is None or record.n <= known.n)
            ):  # reset while reading it: compare with the last record read
                compare[tp] = Incarnation(known.n, seen.offset, record_crc(seen.key, seen.value))
            elif record is None:
                msg = last[tp]
                n = known.n if known is not None else 0
                fresh[tp] = Incarnation(n, msg.offset, record_crc(msg.key, msg.value))
            elif record.offset < 0:
                self._known[tp] = record
            else:
                compare[tp] = record
        if compare:
            found = await self.reader.first_records({tp: r.offset for tp, r in compare.items()})
            for tp, record in compare.items():
                now = found.get(tp)
                if now is not None and (now.offset != record.offset or now.crc == record.crc):
                    self._known[tp] = record  # the same record, or gone below the log start
                    continue
                msg = last[tp]
                fresh[tp] = Incarnation(record.n + 1, msg.offset, record_crc(msg.key, msg.value))
                self._announce(tp, record, now, tp in suspects)
        if fresh:
            saved = await self._store(fresh)
            self._known.update(saved)

    def _announce(self, tp: TP, old: Incarnation, now: RecordSeen | None, by_reset: bool) -> None:
        topic, partition = tp
        what = (
            f"it now ends before offset {old.offset}"
            if now is None
            else f"its record at offset {old.offset} is not the one read before"
        )
        log.warning(
            "%s[%d] is a new incarnation of the topic (#%d): %s%s. Its events are applied "
            "under a new watermark instead of being taken for duplicates.",
            topic,
            partition,
            old.n + 1,
            what,
            " (aiokafka reset its offset)" if by_reset else "",
            extra={"topic": topic, "partition": partition, "incarnation": old.n + 1},
        )
        self.metrics.topic_incarnations.labels(topic).inc()

    async def _load(self, tps: Sequence[TP]) -> dict[TP, Incarnation]:
        return await self.records.load(tps)

    async def _store(self, records: dict[TP, Incarnation]) -> dict[TP, Incarnation]:
        return await self.records.save(records)


class StoredIncarnations:
    """Incarnation numbers as stored, read once (``stocksync rebuild`` replays the live topics).

    It remembers the last record of each partition it was shown, so the rebuild can
    store the numbers it used (:meth:`records`): after Redis lost everything, the
    workers then read the same numbers the rebuilt watermarks carry.
    """

    def __init__(self, numbers: dict[TP, int]) -> None:
        self.numbers = numbers
        self._last: dict[TP, SourceMessage] = {}

    @classmethod
    async def load(cls, records: IncarnationRecords) -> StoredIncarnations:
        """Read every stored incarnation."""
        return cls({tp: record.n for tp, record in (await records.load_all()).items()})

    async def prepare(self, messages: Sequence[SourceMessage]) -> None:
        """Nothing to check (the numbers are the stored ones); remember the last records."""
        for msg in messages:
            self._last[(msg.topic, msg.partition)] = msg

    def of(self, topic: str, partition: int) -> int:
        """The stored number, 0 for a partition never recorded."""
        return self.numbers.get((topic, partition), 0)

    def records(self) -> dict[TP, Incarnation]:
        """The number used for each partition replayed, with the last record read in it."""
        return {
            tp: Incarnation(self.of(*tp), msg.offset, record_crc(msg.key, msg.value))
            for tp, msg in self._last.items()
        }


class KafkaRecordReader:
    """Reads records back with a short-lived consumer outside any group."""

    def __init__(self, settings: Settings, *, wait: float = 3.0) -> None:
        self.settings = settings
        self.wait = wait

    async def first_records(self, wanted: dict[TP, int]) -> dict[TP, RecordSeen | None]:
        """The first record at or after each offset; None where the partition ends before it."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers(self.settings.broker),
            client_id="stocksync-incarnations",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            **kafka_client_options(self.settings),
        )
        await consumer.start()
        try:
            return await self._read(consumer, wanted)
        finally:
            await consumer.stop()

    async def _read(
        self, consumer: AIOKafkaConsumer, wanted: dict[TP, int]
    ) -> dict[TP, RecordSeen | None]:
        tps = {TopicPartition(topic, partition): (topic, partition) for topic, partition in wanted}
        consumer.assign(list(tps))
        starts = await consumer.beginning_offsets(list(tps))
        for tp, key in tps.items():
            consumer.seek(tp, max(wanted[key], starts[tp]))
        found: dict[TP, RecordSeen | None] = {}
        open_ = set(tps)
        deadline = time.monotonic() + self.wait
        while open_ and time.monotonic() < deadline:
            for tp in list(open_):
                try:
                    batch = await consumer.getmany(tp, timeout_ms=100, max_records=1)
                except OffsetOutOfRangeError:  # beyond the end: this partition ends before
                    found[tps[tp]] = None
                    open_.discard(tp)
                    continue
                for record in batch.get(tp, ()):
                    found[tps[tp]] = RecordSeen(record.offset, record_crc(record.key, record.value))
                    open_.discard(tp)
                    break
        if open_:
            ends = await consumer.end_offsets(list(open_))
            for tp in open_:
                if ends[tp] > wanted[tps[tp]]:
                    raise TimeoutError(
                        f"{tp.topic}[{tp.partition}] did not return its record at offset "
                        f"{wanted[tps[tp]]} within {self.wait:.0f} s"
                    )
                found[tps[tp]] = None
        return found
