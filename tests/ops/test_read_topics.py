"""Reading topics to their end while producers keep writing: the read stops, missing nothing."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer

from stocksync.agents.topics import topic_names
from stocksync.config.settings import Settings
from stocksync.ops.access import Record, read_topics
from tests.ops.helpers import produce, run


def test_a_busy_topic_is_read_past_what_it_held_and_no_further(settings: Settings) -> None:
    stock = topic_names(settings).stock
    produce(settings, [(stock, b"k", f"old-{i}".encode(), []) for i in range(20)])

    async def scenario() -> tuple[list[Record], float]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker.removeprefix("kafka://"))
        await producer.start()
        stop = asyncio.Event()

        async def keep_producing() -> None:
            n = 0
            while not stop.is_set():
                await producer.send_and_wait(stock, key=b"k", value=f"new-{n}".encode())
                n += 1
                await asyncio.sleep(0.02)

        busy = asyncio.create_task(keep_producing())
        try:
            await asyncio.sleep(0.5)
            started = time.monotonic()
            since_ms = time.time_ns() // 1_000_000
            found: list[Record] = []
            async for records, _ in read_topics(settings, [stock], since_ms=since_ms):
                found += records
            return found, time.monotonic() - started
        finally:
            stop.set()
            await busy
            await producer.stop()

    found, took = run(scenario())
    values = [r.value for r in found]
    assert [v for v in values if v.startswith(b"old-")] == [f"old-{i}".encode() for i in range(20)]
    assert any(v.startswith(b"new-") for v in values)  # what was produced before reading began
    assert took < 10, f"reading chased the producer for {took:.1f} s"
