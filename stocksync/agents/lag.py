"""Consumer lag per assigned partition, and how long a lagging partition has not moved.

The whole-worker stall alert sees a worker that consumes nothing; one
partition stuck while the others flow (a batch that keeps retrying, a
partition held by a worker that stopped consuming it) needs a figure per
partition. Every :data:`LAG_EVERY` seconds, off the per-event path,
:class:`ConsumerLag` reads the worker's consumer and sets, for every
partition assigned to this worker (the source topics and the effects topic):

- ``stocksync_consumer_lag{topic,partition}``: the high watermark minus the
  group's **committed** offset, the records a crash would hand to the next
  owner again. Faust commits every ``broker_commit_interval`` (2.8 s), so a
  partition that flows shows a few seconds' worth of records, not 0, and a
  stuck batch shows as lag even when the consumer already fetched past it
  (the fetch position does not wait for processing). The end is the larger of
  the high watermark and the fetch position, so a broker that under-reports
  its high watermark (Tansu) still counts what was fetched. A partition with
  nothing committed yet counts from its log start.
- ``stocksync_consumer_partition_stalled_seconds{topic,partition}``: seconds
  since the committed offset last moved while the lag is above 0; 0 when
  caught up.

A partition revoked from this worker loses both label sets at once, so a
rebalance leaves no stale figure behind. What is read: the consumer's
assignment, high watermarks (from fetch responses, no request) and positions
through Faust's public consumer; the committed offsets through
:func:`stocksync.compat.faust.committed_offsets` (Faust keeps them privately).
On another Faust, where that stands down, the lag counts from the fetch
position instead (a stuck batch then shows only once the fetch buffer is full).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from stocksync.agents.metrics import WorkerMetrics
from stocksync.compat import faust as compat_faust

__all__ = ["LAG_EVERY", "ConsumerLag", "PartitionOffsets", "PartitionProgress", "Progress"]

log = logging.getLogger("stocksync.lag")

#: Seconds between two readings of the consumer's offsets.
LAG_EVERY = 5.0

#: A partition as (topic, partition number).
TP = tuple[str, int]


class PartitionOffsets(NamedTuple):
    """What the consumer knows of one partition (None: not known yet)."""

    highwater: int | None
    position: int | None
    committed: int | None
    #: The log start; used only while nothing is committed.
    start: int | None = None


class Progress(NamedTuple):
    """One partition's figures: records not committed, and since when it has not moved."""

    lag: int
    done: int
    #: Monotonic time from which the partition lags without its committed offset moving.
    since: float | None

    def stalled(self, now: float) -> float:
        """Seconds the partition has lagged without progress (0 when caught up)."""
        return 0.0 if self.since is None else max(0.0, now - self.since)


class PartitionProgress:
    """The pure part: offsets in, lag and stalled time per partition out (no I/O)."""

    def __init__(self) -> None:
        self.partitions: dict[TP, Progress] = {}

    @staticmethod
    def lag_of(offsets: PartitionOffsets) -> tuple[int, int] | None:
        """(lag, the offset counted as done), or None while no end is known."""
        ends = [x for x in (offsets.highwater, offsets.position) if x is not None]
        if not ends:
            return None
        done = offsets.committed
        if done is None:
            done = offsets.start if offsets.start is not None else 0
        return max(0, max(ends) - done), done

    def observe(self, offsets: Mapping[TP, PartitionOffsets], now: float) -> set[TP]:
        """Take one reading of every assigned partition; returns the partitions dropped.

        A partition absent from ``offsets`` is no longer assigned and is forgotten;
        one whose end is not known yet keeps its last figures.
        """
        dropped = set(self.partitions) - set(offsets)
        for tp in dropped:
            del self.partitions[tp]
        for tp, each in offsets.items():
            found = self.lag_of(each)
            if found is None:
                continue
            lag, done = found
            before = self.partitions.get(tp)
            if lag == 0:
                since = None
            elif before is None or before.since is None or before.done != done:
                since = now  # lagging from now on, or it moved: the clock starts again
            else:
                since = before.since
            self.partitions[tp] = Progress(lag, done, since)
        return dropped

    def forget(self, tps: Iterable[TP]) -> set[TP]:
        """Drop partitions (revoked); returns those that were known."""
        gone = {tp for tp in tps if tp in self.partitions}
        for tp in gone:
            del self.partitions[tp]
        return gone


def _tp(tp: Any) -> TP:
    return (str(tp.topic), int(tp.partition))


class ConsumerLag:
    """Reads a Faust app's consumer every ``interval`` seconds into the two gauges."""

    def __init__(
        self,
        app: Any,
        metrics: WorkerMetrics,
        *,
        interval: float = LAG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.interval = interval
        self.clock = clock
        self.progress = PartitionProgress()
        #: Log starts of partitions with nothing committed, read once per assignment.
        self._starts: dict[TP, int] = {}

    async def run(self) -> None:
        """Read the consumer every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.update()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a reading that fails is tried again next time
                log.debug("consumer lag not read: %r", exc)
            await asyncio.sleep(self.interval)

    async def update(self) -> None:
        """One reading: every assigned partition's offsets into the gauges."""
        offsets = await self.read()
        dropped = self.progress.observe(offsets, self.clock())
        self._remove(dropped)
        self._export()

    def revoked(self, tps: Iterable[Any]) -> None:
        """Drop the figures of partitions taken from this worker, before the next reading."""
        gone = self.progress.forget(_tp(tp) for tp in tps)
        self._remove(gone)

    async def read(self) -> dict[TP, PartitionOffsets]:
        """The offsets of every partition assigned to this worker, as the consumer has them."""
        consumer = self.app.consumer
        assigned = sorted(consumer.assignment(), key=_tp)
        committed = compat_faust.committed_offsets(consumer)
        positions = await asyncio.gather(
            *(self._position(consumer, tp) for tp in assigned)
        )
        for tp in set(self._starts) - {_tp(tp) for tp in assigned}:
            del self._starts[tp]
        found: dict[TP, PartitionOffsets] = {}
        no_commit = []
        for tp, position in zip(assigned, positions, strict=True):
            done = position if committed is None else committed.get(tp)
            key = _tp(tp)
            if done is None and key not in self._starts:
                no_commit.append(tp)
            found[key] = PartitionOffsets(self._highwater(consumer, tp), position, done)
        if no_commit:
            self._starts.update(await self._log_starts(consumer, no_commit))
        return {
            tp: each._replace(start=self._starts.get(tp)) if each.committed is None else each
            for tp, each in found.items()
        }

    @staticmethod
    def _highwater(consumer: Any, tp: Any) -> int | None:
        # From the last fetch response; raises once the partition is revoked meanwhile.
        with contextlib.suppress(Exception):
            value = consumer.highwater(tp)
            return None if value is None else int(value)
        return None

    async def _position(self, consumer: Any, tp: Any) -> int | None:
        # A partition waiting for its offset reset would make this wait; it is read next time.
        with contextlib.suppress(Exception):
            value = await asyncio.wait_for(consumer.position(tp), self.interval)
            return None if value is None else int(value)
        return None

    async def _log_starts(self, consumer: Any, tps: list[Any]) -> dict[TP, int]:
        with contextlib.suppress(Exception):
            starts = await asyncio.wait_for(consumer.earliest_offsets(*tps), self.interval)
            return {_tp(tp): int(offset) for tp, offset in starts.items() if offset is not None}
        return {}

    def _export(self) -> None:
        now = self.clock()
        lag, stalled = self.metrics.consumer_lag, self.metrics.partition_stalled
        for (topic, partition), each in self.progress.partitions.items():
            lag.labels(topic, str(partition)).set(each.lag)
            stalled.labels(topic, str(partition)).set(each.stalled(now))

    def _remove(self, tps: Iterable[TP]) -> None:
        for topic, partition in tps:
            for gauge in (self.metrics.consumer_lag, self.metrics.partition_stalled):
                with contextlib.suppress(KeyError):
                    gauge.remove(topic, str(partition))
