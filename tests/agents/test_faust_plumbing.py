"""Faust plumbing against the real broker: topics, the partition hash, workers started from code."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import zlib
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import faust
import pytest
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stocksync.agents.app import (
    WorkerStartError,
    create_app,
    raw_topic,
    start_worker,
    stop_worker,
)
from stocksync.agents.topics import (
    BrokerUnavailable,
    TopicNames,
    effects_partition,
    ensure_topics,
    topic_names,
)
from stocksync.config.settings import Settings, WorkerSettings
from stocksync.daemon.services import TansuBroker, free_port

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` on a fresh uvloop loop, bounded by ``timeout`` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


def settings_for(broker: TansuBroker, prefix: str, partitions: int = 4) -> Settings:
    """Settings pointing at the test broker, with topics and group unique to the test."""
    return Settings(
        broker=broker.url,
        topic_prefix=prefix,
        partitions=partitions,
        worker=WorkerSettings(group_id=f"{prefix}-group"),
    )


# -- names and hash ---------------------------------------------------------------


def test_topic_names_follow_the_prefix() -> None:
    names = topic_names(Settings(topic_prefix="shop"))
    assert names == TopicNames(
        stock="shop.stock.v1",
        orders="shop.orders.v1",
        returns="shop.returns.v1",
        effects="shop.effects.v1",
        dlq="shop.dlq",
    )
    assert names.sources == ("shop.stock.v1", "shop.orders.v1", "shop.returns.v1")
    assert names.owned == ("shop.effects.v1", "shop.dlq")


@pytest.mark.parametrize(
    ("sku", "partitions", "expected"),
    [
        ("SKU-1", 8, 4),
        ("SKU-2", 8, 6),
        ("ABC-123", 8, 6),
        ("SKU-2", 16, 14),
        ("sku/with:odd.chars", 8, 3),
        ("sku/with:odd.chars", 16, 11),
        ("é-accent", 8, 0),  # UTF-8 bytes, not code points
        ("SKU-1", 1, 0),
        # The standard CRC-32 check value: crc32("123456789") == 0xCBF43926.
        ("123456789", 0xCBF43926 + 1, 0xCBF43926),
    ],
)
def test_effects_partition_is_the_documented_crc32(
    sku: str, partitions: int, expected: int
) -> None:
    assert effects_partition(sku, partitions) == expected
    assert effects_partition(sku, partitions) == zlib.crc32(sku.encode("utf-8")) % partitions


def test_effects_partition_rejects_no_partitions() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        effects_partition("SKU-1", 0)


# -- topics on the broker ---------------------------------------------------------


async def _describe(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()


def test_ensure_topics_creates_all_with_configured_partitions(
    broker: TansuBroker, topic_prefix: str
) -> None:
    settings = settings_for(broker, topic_prefix, partitions=5)
    names = topic_names(settings)
    counts = run(ensure_topics(broker.bootstrap, settings))
    assert counts == dict.fromkeys(names, 5)
    assert run(_describe(broker.bootstrap, list(names))) == counts


def test_ensure_topics_keeps_existing_topics_and_is_idempotent(
    broker: TansuBroker, topic_prefix: str
) -> None:
    settings = settings_for(broker, topic_prefix, partitions=4)
    names = topic_names(settings)

    async def precreate() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(names.stock, 3, 1), NewTopic(names.orders, 7, 1)])
        finally:
            await admin.close()

    run(precreate())
    first = run(ensure_topics(broker.url, settings))  # a Faust URL is accepted too
    assert first == {
        names.stock: 3,
        names.orders: 7,
        names.returns: 4,
        names.effects: 4,
        names.dlq: 4,
    }
    assert run(ensure_topics(broker.bootstrap, settings)) == first


def test_ensure_topics_without_a_broker_says_so_quickly() -> None:
    settings = Settings(topic_prefix="nobroker")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="No Kafka broker answered"):
        run(ensure_topics(f"127.0.0.1:{free_port()}", settings, timeout=5))
    assert time.monotonic() - started < 5


# -- a worker started from code ------------------------------------------------------


async def _produce(
    bootstrap: str, records: list[tuple[str, int, bytes | None, bytes | None]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, partition, key, value in records:
            await producer.send_and_wait(
                topic, value, key=key, partition=partition, headers=[("origin", b"test")]
            )
    finally:
        await producer.stop()


async def _read_partition(bootstrap: str, topic: str, partition: int, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    await consumer.start()
    try:
        values: list[bytes] = []
        while len(values) < count:
            batch = await consumer.getmany(tp, timeout_ms=500)
            values.extend(record.value for record in batch.get(tp, []))
        return values
    finally:
        await consumer.stop()


def test_worker_from_code_consumes_raw_bytes_and_sends_to_explicit_partitions(
    broker: TansuBroker, topic_prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(broker, topic_prefix, partitions=4)
    names = topic_names(settings)
    seen: list[tuple[str, int, int, float, Any, bytes | None, bytes | None]] = []
    delivered: list[tuple[int, int]] = []

    async def scenario() -> float:
        await ensure_topics(broker.bootstrap, settings)
        # Produced before the worker exists: a new group starts from the earliest offset.
        await _produce(broker.bootstrap, [(names.stock, 2, b"SKU-1", b"\xff\x00not json")])

        app = create_app(settings, worker_id="w1", datadir=tmp_path)
        source = raw_topic(app, names.stock)
        effects = raw_topic(app, names.effects)

        @app.agent(source)
        async def translate(stream: faust.Stream[bytes]) -> None:
            async for events in stream.take_events(100, 0.05):
                sends = []
                for event in events:
                    message = event.message
                    seen.append(
                        (
                            message.topic,
                            message.partition,
                            message.offset,
                            message.timestamp,
                            message.headers,
                            message.key,
                            event.value,
                        )
                    )
                    sku = (message.key or b"").decode()
                    partition = effects_partition(sku, 4)
                    sends.append(
                        await effects.send(
                            key=message.key, value=b"effect:" + sku.encode(), partition=partition
                        )
                    )
                for pending in sends:
                    metadata = await pending
                    delivered.append((metadata.partition, metadata.offset))

        worker = await start_worker(app, timeout=30)
        try:
            await _produce(
                broker.bootstrap,
                [
                    (names.stock, 2, b"SKU-2", b'{"a": 1}'),
                    (names.stock, 0, b"ABC-123", None),  # a tombstone reaches the agent
                ],
            )
            while len(delivered) < 3:
                await asyncio.sleep(0.05)
        finally:
            stop_seconds = await stop_worker(worker, timeout=10)
        return stop_seconds

    stop_seconds = run(scenario())
    assert stop_seconds < 5

    by_key = {entry[5]: entry for entry in seen}
    assert set(by_key) == {b"SKU-1", b"SKU-2", b"ABC-123"}
    topic, partition, offset, timestamp, headers, _, value = by_key[b"SKU-1"]
    assert (topic, partition, offset, value) == (names.stock, 2, 0, b"\xff\x00not json")
    assert abs(timestamp - time.time()) < 120  # seconds since the epoch, from the record
    assert dict(headers) == {"origin": b"test"}
    assert by_key[b"SKU-2"][1:3] == (2, 1)  # partition 2, offset 1
    assert by_key[b"SKU-2"][6] == b'{"a": 1}'  # raw bytes, not decoded JSON
    assert by_key[b"ABC-123"][1:3] == (0, 0)
    assert by_key[b"ABC-123"][6] is None

    # Each effect landed on the partition of its SKU's hash, and nowhere else.
    assert sorted(p for p, _ in delivered) == sorted(
        effects_partition(sku, 4) for sku in ("SKU-1", "SKU-2", "ABC-123")
    )
    landed = run(
        _read_partition(broker.bootstrap, names.effects, effects_partition("ABC-123", 4), 2)
    )
    assert sorted(landed) == [b"effect:ABC-123", b"effect:SKU-2"]  # both hash to 2


def test_start_worker_without_a_broker_raises_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(broker=f"kafka://127.0.0.1:{free_port()}", topic_prefix="nobroker")

    async def scenario() -> None:
        app = create_app(settings, datadir=tmp_path)
        source = raw_topic(app, topic_names(settings).stock)

        @app.agent(source)
        async def drain(stream: faust.StreamT[bytes]) -> None:
            async for _ in stream.events():
                pass

        await start_worker(app, timeout=10)

    with pytest.raises(WorkerStartError, match="could not start"):
        run(scenario())


def test_a_crashed_worker_stops_itself_and_reports_why(
    broker: TansuBroker, topic_prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(broker, topic_prefix, partitions=1)

    async def scenario() -> tuple[BaseException | None, float]:
        await ensure_topics(broker.bootstrap, settings)
        app = create_app(settings, datadir=tmp_path)

        @app.agent(raw_topic(app, topic_names(settings).stock))
        async def drain(stream: faust.StreamT[bytes]) -> None:
            async for _ in stream.events():
                pass

        worker = await start_worker(app, timeout=30)
        started = time.monotonic()
        await app.crash(RuntimeError("rebalance went wrong"))
        await worker.wait_finished()
        return worker.crash_reason, time.monotonic() - started

    reason, seconds = run(scenario())
    assert isinstance(reason, RuntimeError)
    assert seconds < 5


def test_sigterm_stops_a_worker_that_handles_signals_even_mid_event(
    broker: TansuBroker, topic_prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(broker, topic_prefix, partitions=1)
    names = topic_names(settings)

    async def scenario() -> float:
        await ensure_topics(broker.bootstrap, settings)
        app = create_app(settings, datadir=tmp_path)
        stuck = asyncio.Event()

        @app.agent(raw_topic(app, names.stock))
        async def hang(stream: faust.StreamT[bytes]) -> None:
            async for _ in stream.events():
                stuck.set()
                await asyncio.sleep(3600)  # never acks: stop must not wait for it

        worker = await start_worker(app, timeout=30, handle_signals=True, shutdown_timeout=5)
        try:
            await _produce(broker.bootstrap, [(names.stock, 0, b"k", b"v")])
            await stuck.wait()
            started = time.monotonic()
            os.kill(os.getpid(), signal.SIGTERM)
            await worker.wait_finished()
            return time.monotonic() - started
        finally:
            await stop_worker(worker)

    assert run(scenario()) < 3


@pytest.mark.slow
def test_two_workers_in_one_group_split_the_partitions(
    broker: TansuBroker, topic_prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(broker, topic_prefix, partitions=4)
    names = topic_names(settings)

    def make_app(worker_id: str) -> faust.App:
        app = create_app(settings, worker_id=worker_id, datadir=tmp_path / worker_id)

        @app.agent(raw_topic(app, names.stock))
        async def drain(stream: faust.StreamT[bytes]) -> None:
            async for _ in stream.events():
                pass

        return app

    async def scenario() -> tuple[set[int], set[int]]:
        await ensure_topics(broker.bootstrap, settings)
        first, second = make_app("w1"), make_app("w2")
        one = await start_worker(first, timeout=30)
        try:
            two = await start_worker(second, timeout=30)
            try:
                while len(first.consumer.assignment()) != 2:  # rebalanced after the join
                    await asyncio.sleep(0.1)
                return (
                    {tp.partition for tp in first.consumer.assignment()},
                    {tp.partition for tp in second.consumer.assignment()},
                )
            finally:
                await stop_worker(two)
        finally:
            await stop_worker(one)

    mine, theirs = run(scenario())
    assert mine | theirs == {0, 1, 2, 3}
    assert not mine & theirs
    assert len(mine) == len(theirs) == 2


def test_the_app_leaves_faust_statistics_sensor_out(tmp_path: Path) -> None:
    """Faust's Monitor runs several times per message for views the worker does not serve."""

    async def scenario() -> tuple[bool, bool]:
        app = create_app(Settings(broker="kafka://127.0.0.1:9"), datadir=tmp_path)
        stock = faust.App("stock-app", broker="kafka://127.0.0.1:9", datadir=str(tmp_path))
        app.on_init_dependencies()
        stock.on_init_dependencies()
        for each in (app, stock):  # never started: close the loop the consumer thread made
            each.consumer._thread.thread_loop.close()
        return app.monitor in set(app.sensors), stock.monitor in set(stock.sensors)

    ours, faust_default = run(scenario())
    assert faust_default and not ours
