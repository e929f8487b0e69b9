"""Consumer lag per partition: the computation, the gauges, and what Faust hands over."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from stocksync.agents.app import create_app
from stocksync.agents.lag import ConsumerLag, PartitionOffsets, PartitionProgress
from stocksync.agents.metrics import WorkerMetrics
from stocksync.compat import faust as compat_faust
from stocksync.config.settings import Settings, WorkerSettings

__all__: list[str] = []

S0 = ("s.stock.v1", 0)
S1 = ("s.stock.v1", 1)


def offsets(
    highwater: int | None, committed: int | None, position: int | None = None,
    start: int | None = None,
) -> PartitionOffsets:
    return PartitionOffsets(highwater=highwater, position=position, committed=committed,
                            start=start)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (offsets(10, 10), (0, 10)),
        (offsets(10, 4), (6, 4)),
        # A broker that under-reports its high watermark: what was fetched still counts.
        (offsets(5, 4, position=9), (5, 4)),
        # Nothing committed: counted from the log start, or from 0 when it is not known.
        (offsets(10, None, start=3), (7, 3)),
        (offsets(10, None), (10, 0)),
        # A committed offset past the end (a recreated topic) is no negative lag.
        (offsets(2, 7), (0, 7)),
        (offsets(None, 4, position=6), (2, 4)),
        (offsets(None, 4), None),
    ],
)
def test_lag_is_the_end_minus_the_committed_offset(
    given: PartitionOffsets, expected: tuple[int, int] | None
) -> None:
    assert PartitionProgress.lag_of(given) == expected


def test_stalled_time_grows_only_while_lagging_without_progress() -> None:
    progress = PartitionProgress()
    progress.observe({S0: offsets(10, 10), S1: offsets(10, 10)}, now=100.0)
    assert progress.partitions[S0].stalled(100.0) == 0.0
    # Idle for long, then records arrive: the clock starts when the lag is first seen.
    progress.observe({S0: offsets(15, 10), S1: offsets(12, 10)}, now=1000.0)
    assert progress.partitions[S0].stalled(1000.0) == 0.0
    progress.observe({S0: offsets(20, 10), S1: offsets(14, 12)}, now=1005.0)
    assert progress.partitions[S0].stalled(1005.0) == 5.0
    assert progress.partitions[S0].lag == 10
    # S1 moved (committed 10 -> 12): it lags, but it is not stalled.
    assert progress.partitions[S1].stalled(1005.0) == 0.0
    assert progress.partitions[S1].lag == 2
    progress.observe({S0: offsets(20, 10), S1: offsets(14, 12)}, now=1600.0)
    assert progress.partitions[S0].stalled(1600.0) == 600.0
    assert progress.partitions[S1].stalled(1600.0) == 595.0
    # Caught up: back to 0, and a new lag starts a new clock.
    progress.observe({S0: offsets(20, 20), S1: offsets(14, 12)}, now=1605.0)
    assert progress.partitions[S0].stalled(1605.0) == 0.0
    progress.observe({S0: offsets(21, 20), S1: offsets(14, 12)}, now=1610.0)
    assert progress.partitions[S0].stalled(1612.0) == 2.0


def test_partitions_no_longer_assigned_are_dropped() -> None:
    progress = PartitionProgress()
    progress.observe({S0: offsets(10, 4), S1: offsets(10, 4)}, now=0.0)
    assert progress.observe({S1: offsets(10, 4)}, now=5.0) == {S0}
    assert set(progress.partitions) == {S1}
    assert progress.forget([S1, S0]) == {S1}
    assert progress.partitions == {}


def test_a_partition_whose_end_is_not_known_keeps_its_figures() -> None:
    progress = PartitionProgress()
    progress.observe({S0: offsets(10, 4)}, now=0.0)
    progress.observe({S0: offsets(None, 4)}, now=5.0)
    assert progress.partitions[S0].lag == 6
    assert progress.partitions[S0].stalled(5.0) == 5.0


# --- the gauges, from a consumer that answers as Faust's does ------------------------------


@dataclass
class _Consumer:
    """Answers the calls ConsumerLag makes of Faust's consumer, from fixed offsets."""

    highwaters: dict[TopicPartition, int]
    positions: dict[TopicPartition, int]
    _committed_offset: dict[TopicPartition, int | None]
    starts: dict[TopicPartition, int] = field(default_factory=dict)
    start_reads: int = 0

    def assignment(self) -> set[TopicPartition]:
        return set(self.highwaters)

    def highwater(self, tp: TopicPartition) -> int:
        return self.highwaters[tp]

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def earliest_offsets(self, *tps: TopicPartition) -> dict[TopicPartition, int]:
        self.start_reads += 1
        return {tp: self.starts.get(tp, 0) for tp in tps}


@dataclass
class _App:
    consumer: _Consumer


def _samples(metrics: WorkerMetrics, name: str) -> dict[tuple[str, str], float]:
    return {
        (s.labels["topic"], s.labels["partition"]): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == name
    }


def test_the_gauges_follow_the_assignment_and_drop_revoked_partitions() -> None:
    a, b = TopicPartition("s.stock.v1", 0), TopicPartition("s.effects.v1", 3)
    consumer = _Consumer(
        highwaters={a: 50, b: 7}, positions={a: 50, b: 7}, _committed_offset={a: 20, b: None},
        starts={b: 2},
    )
    now = [10.0]
    metrics = WorkerMetrics()
    lag = ConsumerLag(_App(consumer), metrics, clock=lambda: now[0])
    asyncio.run(lag.update())
    assert _samples(metrics, "stocksync_consumer_lag") == {
        ("s.stock.v1", "0"): 30.0, ("s.effects.v1", "3"): 5.0,
    }
    now[0] = 25.0
    asyncio.run(lag.update())
    assert _samples(metrics, "stocksync_consumer_partition_stalled_seconds") == {
        ("s.stock.v1", "0"): 15.0, ("s.effects.v1", "3"): 15.0,
    }
    assert consumer.start_reads == 1  # read once while the partition stays assigned
    lag.revoked({b})
    assert set(_samples(metrics, "stocksync_consumer_lag")) == {("s.stock.v1", "0")}
    assert set(_samples(metrics, "stocksync_consumer_partition_stalled_seconds")) == {
        ("s.stock.v1", "0")
    }
    # A rebalance that takes the partition without the signal: gone at the next reading.
    del consumer.highwaters[a]
    consumer.highwaters[b] = 7
    consumer._committed_offset = {b: 7}
    asyncio.run(lag.update())
    assert _samples(metrics, "stocksync_consumer_lag") == {("s.effects.v1", "3"): 0.0}
    assert _samples(metrics, "stocksync_consumer_partition_stalled_seconds") == {
        ("s.effects.v1", "3"): 0.0
    }


def test_faust_consumer_keeps_the_committed_offsets_where_compat_reads_them(
    tmp_path: Path,
) -> None:
    """A canary: a Faust that no longer keeps ``_committed_offset`` fails here."""

    async def scenario() -> tuple[object, object]:
        app = create_app(Settings(worker=WorkerSettings(group_id="g")), datadir=tmp_path)
        consumer = app.consumer
        try:
            before = compat_faust.committed_offsets(consumer)
            tp = TopicPartition("s.stock.v1", 1)
            consumer._committed_offset.update({tp: 42})  # what Faust does after a commit
            return before, compat_faust.committed_offsets(consumer)
        finally:
            compat_faust.close_unused_consumer_loop(app)  # never started

    before, after = asyncio.run(scenario())
    assert before == {}
    assert after == {TopicPartition("s.stock.v1", 1): 42}


def test_on_another_faust_the_lag_counts_from_the_fetch_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The committed offsets stand down with the other adjustments; the position stands in."""
    monkeypatch.setattr(compat_faust, "ACTIVE", False)
    a = TopicPartition("s.stock.v1", 0)
    consumer = _Consumer(highwaters={a: 50}, positions={a: 45}, _committed_offset={a: 20})
    assert compat_faust.committed_offsets(consumer) is None
    metrics = WorkerMetrics()
    asyncio.run(ConsumerLag(_App(consumer), metrics).update())
    assert _samples(metrics, "stocksync_consumer_lag") == {("s.stock.v1", "0"): 5.0}
