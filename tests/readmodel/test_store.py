"""One suite, two stores: the Redis store (against a real redis-server) and the memory store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import msgspec
import pytest
import redis

from stocksync.codecs.projections import projection_decoder
from stocksync.codecs.state import OrderLine, OrderState, Position, RmaLine, RmaState
from stocksync.readmodel.keys import Keys
from stocksync.readmodel.store import MemoryStore, PositionStore, RedisStore, StoreUnavailable, Write

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion on a fresh loop."""
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def _proj(sku: str, version: int) -> bytes:
    return msgspec.json.encode(
        {"sku": sku, "version": version, "updated_at": "2026-11-27T09:00:00.000Z", "channels": []}
    )


class StoreContract:
    """What every position/state store must do; subclasses provide ``make``."""

    make: Callable[[], object]

    def test_unknown_positions_are_absent(self) -> None:
        store = self.make()
        assert run(store.load_positions(["A", "B"])) == {}  # type: ignore[attr-defined]

    def test_write_then_load_round_trips(self) -> None:
        store = self.make()
        pos = Position(sku="A", version=1, updated_at=5, demand={"web": 2})
        assert run(store.write_batch([Write(pos, _proj("A", 1), 0)])) == []  # type: ignore[attr-defined]
        assert run(store.load_positions(["A", "B"])) == {"A": pos}  # type: ignore[attr-defined]

    def test_stale_version_refuses_the_whole_batch(self) -> None:
        store = self.make()
        run(store.write_batch([Write(Position(sku="A", version=1), _proj("A", 1), 0)]))  # type: ignore[attr-defined]
        stale = Write(Position(sku="A", version=2, demand={"web": 1}), _proj("A", 2), 0)
        fresh = Write(Position(sku="B", version=1), _proj("B", 1), 0)
        assert run(store.write_batch([fresh, stale])) == ["A"]  # type: ignore[attr-defined]
        loaded = run(store.load_positions(["A", "B"]))  # type: ignore[attr-defined]
        assert loaded == {"A": Position(sku="A", version=1)}

    def test_order_and_rma_states_round_trip(self) -> None:
        store = self.make()
        order = OrderState(order_id="o1", channel="web", lines={"1": OrderLine("A", 2, None)})
        rma = RmaState(rma_id="r1", lines={"1": RmaLine("A", 1, 0, 0)})
        run(store.save_states([order, rma]))  # type: ignore[attr-defined]
        assert run(store.load_orders(["o1", "o2"])) == {"o1": order}  # type: ignore[attr-defined]
        assert run(store.load_rmas(["r1", "o1"])) == {"r1": rma}  # type: ignore[attr-defined]


class TestMemoryStore(StoreContract):
    """The memory store keeps the contract."""

    def make(self) -> MemoryStore:
        return MemoryStore()


class TestRedisStore(StoreContract):
    """The Redis store keeps the contract, and writes the layout the API reads."""

    @pytest.fixture(autouse=True)
    def _url(self, redis_url: str) -> Iterator[None]:
        self.url = redis_url
        yield

    def make(self) -> PositionStore:
        url = self.url

        class Fresh:
            """A store whose calls each use a client made on the running loop."""

            def __getattr__(self, name: str) -> Callable[..., Awaitable[object]]:
                async def call(*args: object) -> object:
                    store = RedisStore.from_url(url, Keys("t"))
                    try:
                        return await getattr(store, name)(*args)
                    finally:
                        await store.close()

                return call

        return Fresh()  # type: ignore[return-value]

    def test_batch_writes_hash_and_change_stream(self) -> None:
        store = self.make()
        a = Position(sku="A", version=1)
        b = Position(sku="B", version=1)
        run(store.write_batch([Write(a, _proj("A", 1), 0), Write(b, _proj("B", 1), 0)]))
        client = redis.Redis.from_url(self.url)
        try:
            keys = Keys("t")
            assert client.hget(keys.sku("A"), "v") == b"1"
            assert projection_decoder.decode(client.hget(keys.sku("B"), "proj")).sku == "B"
            entries = client.xrange(keys.changes())
            assert [e[1][b"sku"] for e in entries] == [b"A", b"B"]
            assert [e[1][b"v"] for e in entries] == [b"1", b"1"]
        finally:
            client.close()


def test_unreachable_redis_is_store_unavailable() -> None:
    async def main() -> None:
        store = RedisStore.from_url("redis://127.0.0.1:1/0", Keys())
        try:
            with pytest.raises(StoreUnavailable, match="positions"):
                await store.load_positions(["A"])
        finally:
            await store.close()

    asyncio.run(main())
