"""Topic incarnations against a real redis-server, with the broker's records given by hand."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis, RedisCluster

from stocksync.agents.incarnations import (
    RecordSeen,
    StoredIncarnations,
    TopicIncarnations,
    record_crc,
)
from stocksync.agents.metrics import WorkerMetrics
from stocksync.agents.stages import SourceMessage
from stocksync.readmodel import core
from stocksync.store.incarnations import Incarnation, IncarnationRecords
from stocksync.store.layout import Keys

__all__: list[str] = []

T = TypeVar("T")
TOPIC = "t.stock.v1"
KEY = "test:incarnations"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


class Log:
    """A broker partition log by hand: offset -> (key, value); ``start`` for retention."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], dict[int, tuple[bytes, bytes]]] = {}
        self.start: dict[tuple[str, int], int] = {}
        self.reads = 0

    def write(self, partition: int, offset: int, value: bytes, key: bytes = b"k") -> SourceMessage:
        self.records.setdefault((TOPIC, partition), {})[offset] = (key, value)
        return SourceMessage(TOPIC, partition, offset, key, value)

    def recreate(self, partition: int) -> None:
        self.records[(TOPIC, partition)] = {}
        self.start.pop((TOPIC, partition), None)

    async def first_records(
        self, wanted: dict[tuple[str, int], int]
    ) -> dict[tuple[str, int], RecordSeen | None]:
        self.reads += 1
        found: dict[tuple[str, int], RecordSeen | None] = {}
        for tp, offset in wanted.items():
            log = self.records.get(tp, {})
            at = max(offset, self.start.get(tp, 0))
            later = sorted(o for o in log if o >= at)
            found[tp] = RecordSeen(later[0], record_crc(*log[later[0]])) if later else None
        return found


class Rig:
    """A TopicIncarnations on a flushed Redis database, and its log."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.log = Log()
        self.metrics = WorkerMetrics()
        self.now = 0.0

    def make(self, client: Redis) -> TopicIncarnations:
        return TopicIncarnations(
            records=IncarnationRecords(client, Keys("test")),
            reader=self.log,
            topics=[TOPIC],
            metrics=self.metrics,
            clock=lambda: self.now,
        )

    def counted(self) -> float:
        return self.metrics.topic_incarnations.labels(TOPIC)._value.get()  # type: ignore[no-any-return]


@pytest.fixture
def rig(redis_url: str) -> Rig:
    return Rig(redis_url)


def test_the_first_sight_is_incarnation_0_and_a_restart_with_the_same_log_keeps_it(
    rig: Rig,
) -> None:
    async def scenario() -> tuple[int, int, int, Incarnation]:
        client = Redis.from_url(rig.url)
        first = rig.make(client)
        await first.prepare([rig.log.write(0, 0, b"a"), rig.log.write(0, 1, b"b")])
        n_first = first.of(TOPIC, 0)
        rig.log.write(0, 2, b"c")
        # A new process (crashed before committing): starts again from offset 0.
        again = rig.make(client)
        await again.prepare([SourceMessage(TOPIC, 0, 0, b"k", b"a")])
        n_again = again.of(TOPIC, 0)
        stored = Incarnation.decode(await client.hget(KEY, f"{TOPIC}/0"))
        await client.aclose()
        return n_first, n_again, rig.log.reads, stored

    n_first, n_again, reads, stored = run(scenario())
    assert (n_first, n_again) == (0, 0)
    assert reads == 1  # the restart read the recorded record back, once
    assert stored == Incarnation(0, 1, record_crc(b"k", b"b"))
    assert rig.counted() == 0


def test_a_recreated_partition_is_a_new_incarnation_logged_and_counted(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> list[int]:
        client = Redis.from_url(rig.url)
        first = rig.make(client)
        for offset in range(3):
            await first.prepare([rig.log.write(1, offset, b"old-%d" % offset)])
        rig.now += 10
        await first.prepare([rig.log.write(1, 3, b"old-3")])  # flushed: offset 3 recorded
        numbers = [first.of(TOPIC, 1)]
        rig.log.recreate(1)
        for offset in range(5):  # the new topic already holds more than the old one read
            rig.log.write(1, offset, b"new-%d" % offset)
        second = rig.make(client)
        await second.prepare([SourceMessage(TOPIC, 1, 0, b"k", b"new-0")])
        numbers.append(second.of(TOPIC, 1))
        rig.now += 10
        await second.prepare([SourceMessage(TOPIC, 1, 4, b"k", b"new-4")])  # offset 4 recorded
        rig.log.recreate(1)  # and once more, now shorter than what was read
        rig.log.write(1, 0, b"newer-0")
        third = rig.make(client)
        await third.prepare([SourceMessage(TOPIC, 1, 0, b"k", b"newer-0")])
        numbers.append(third.of(TOPIC, 1))
        await client.aclose()
        return numbers

    with caplog.at_level(logging.WARNING, logger="stocksync.incarnations"):
        numbers = run(scenario())
    assert numbers == [0, 1, 2]
    assert rig.counted() == 2
    messages = [r.getMessage() for r in caplog.records]
    assert "is not the one read before" in messages[0]
    assert "now ends before offset 4" in messages[1]


def test_records_gone_to_retention_are_the_same_incarnation(rig: Rig) -> None:
    async def scenario() -> int:
        client = Redis.from_url(rig.url)
        first = rig.make(client)
        await first.prepare([rig.log.write(0, 4, b"x")])
        rig.log.write(0, 9, b"y")
        rig.log.start[(TOPIC, 0)] = 7  # offsets below 7 deleted by retention
        again = rig.make(client)
        await again.prepare([SourceMessage(TOPIC, 0, 9, b"k", b"y")])
        await client.aclose()
        return again.of(TOPIC, 0)

    assert run(scenario()) == 0
    assert rig.counted() == 0


def test_an_offset_reset_while_running_is_checked_against_the_last_record_read(
    rig: Rig,
) -> None:
    async def scenario() -> list[int]:
        client = Redis.from_url(rig.url)
        inc = rig.make(client)
        inc.watch_resets()
        try:
            await inc.prepare([rig.log.write(2, 0, b"a"), rig.log.write(2, 1, b"b")])
            numbers = [inc.of(TOPIC, 2)]
            inc._on_reset("another.topic", 2, 0)  # not a source topic: ignored
            inc._on_reset(TOPIC, 2, 0)  # lost group offsets, same log: same incarnation
            await inc.prepare([SourceMessage(TOPIC, 2, 0, b"k", b"a")])
            numbers.append(inc.of(TOPIC, 2))
            rig.log.recreate(2)
            inc._on_reset(TOPIC, 2, 0)  # the topic was recreated under the worker
            await inc.prepare([rig.log.write(2, 0, b"fresh")])
            numbers.append(inc.of(TOPIC, 2))
            await inc.prepare([rig.log.write(2, 1, b"fresh-1")])  # no reset: not read again
            numbers.append(inc.of(TOPIC, 2))
            return numbers
        finally:
            inc.close()
            await client.aclose()

    assert run(scenario()) == [0, 0, 1, 1]
    assert rig.log.reads == 2


def test_a_stale_writer_never_moves_a_record_back(rig: Rig) -> None:
    async def scenario() -> Incarnation:
        client = Redis.from_url(rig.url)
        inc = rig.make(client)
        await inc._store({(TOPIC, 0): Incarnation(1, 50, 7)})
        await inc._store({(TOPIC, 0): Incarnation(1, 40, 8)})  # older offset, same incarnation
        await inc._store({(TOPIC, 0): Incarnation(0, 90, 9)})  # earlier incarnation
        stored = Incarnation.decode(await client.hget(KEY, f"{TOPIC}/0"))
        await client.aclose()
        return stored

    assert run(scenario()) == Incarnation(1, 50, 7)


def test_stored_incarnations_give_the_numbers_to_a_rebuild(rig: Rig) -> None:
    async def scenario() -> StoredIncarnations:
        client = Redis.from_url(rig.url)
        await client.hset(KEY, mapping={f"{TOPIC}/0": "2 10 5", "a/b.v1/3": "1 0 0"})
        stored = await StoredIncarnations.load(IncarnationRecords(client, Keys("test")))
        await client.aclose()
        return stored

    stored = run(scenario())
    assert (stored.of(TOPIC, 0), stored.of("a/b.v1", 3), stored.of(TOPIC, 1)) == (2, 1, 0)


def test_the_incarnation_joins_the_watermark_key_only_after_the_first() -> None:
    ref = core.SourceRef(kind="orders", partition=3, offset=5, topic="x.orders.v1")
    assert ref.src == "x.orders.v1/3"
    again = core.SourceRef(kind="orders", partition=3, offset=5, topic="x.orders.v1", incarnation=2)
    assert again.src == "x.orders.v1/3#2"


def test_a_rebalance_checks_again_and_adopts_another_workers_incarnation(rig: Rig) -> None:
    async def scenario() -> list[int]:
        client = Redis.from_url(rig.url)
        mine, theirs = rig.make(client), rig.make(client)
        await mine.prepare([rig.log.write(0, 0, b"a")])
        numbers = [mine.of(TOPIC, 0)]
        mine.forget()  # revoked: the other worker takes the partition
        numbers.append(mine.of(TOPIC, 0))  # a batch still translating keeps its number
        rig.log.recreate(0)
        await theirs.prepare([rig.log.write(0, 0, b"b")])  # finds it recreated
        numbers.append(theirs.of(TOPIC, 0))
        await mine.prepare([SourceMessage(TOPIC, 0, 0, b"k", b"b")])  # assigned back
        numbers.append(mine.of(TOPIC, 0))
        await client.aclose()
        return numbers

    assert run(scenario()) == [0, 0, 1, 1]
    assert rig.counted() == 1


def test_records_are_kept_on_a_redis_cluster_too(redis_cluster_url: str) -> None:
    async def scenario() -> Incarnation:
        client = RedisCluster.from_url(redis_cluster_url)
        records = IncarnationRecords(client, Keys("test"))
        await records.save({(TOPIC, 0): Incarnation(1, 50, 7)})
        await records.save({(TOPIC, 0): Incarnation(1, 40, 8)})  # older: kept back
        stored = (await records.load([(TOPIC, 0)]))[(TOPIC, 0)]
        await client.aclose()
        return stored

    assert run(scenario()) == Incarnation(1, 50, 7)
