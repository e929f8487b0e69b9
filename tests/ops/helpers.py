"""Kafka helpers of the operator tests: run a coroutine, produce messages, read topics back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from aiokafka import AIOKafkaProducer

from stocksync.config.settings import Settings
from stocksync.ops.access import Record, read_topics

__all__ = ["produce", "read_all", "run"]

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine on a fresh loop."""

    async def main() -> T:
        return await coro

    return asyncio.run(main())


async def _produce(
    settings: Settings, messages: Sequence[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker.removeprefix("kafka://"))
    await producer.start()
    try:
        pending = [
            await producer.send(topic, value=value, key=key, headers=headers)
            for topic, key, value, headers in messages
        ]
        for fut in pending:
            await fut
    finally:
        await producer.stop()


def produce(
    settings: Settings, messages: Sequence[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]]
) -> None:
    """Send ``(topic, key, value, headers)`` messages in order and wait for delivery."""
    run(_produce(settings, messages))


def read_all(settings: Settings, topics: Sequence[str]) -> list[Record]:
    """Every record of ``topics`` as the operator commands read them."""

    async def main() -> list[Record]:
        found: list[Record] = []
        async for records, _ in read_topics(settings, topics):
            found += records
        return found

    return run(main())
