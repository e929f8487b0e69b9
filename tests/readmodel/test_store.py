"""One suite, two stores: the Redis store (against a real redis-server) and the memory store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import msgspec
import pytest
import redis

from stocksync.codecs.projections import projection_decoder
from stocksync.codecs.state import OrderLine, OrderState, Position, RmaLine, RmaState
from stocksync.readmodel.keys import Keys
from stocksync.readmodel.store import (
    WRITE_CHUNK,
    MemoryStore,
    RedisStore,
    StoreUnavailable,
    Write,
)

Store = MemoryStore | RedisStore
Scenario = Callable[[Store], Awaitable[None]]


def _proj(sku: str, version: int) -> bytes:
    return msgspec.json.encode(
        {"sku": sku, "version": version, "updated_at": "2026-11-27T09:00:00.000Z", "channels": []}
    )


def _write(sku: str, version: int, expected: int, **fields: object) -> Write:
    position = Position(sku=sku, version=version, **fields)  # type: ignore[arg-type]
    return Write(position, _proj(sku, version), expected)


class StoreContract:
    """What every position/state store must do; subclasses say how to open one."""

    def opened(self) -> AbstractAsyncContextManager[Store]:
        raise NotImplementedError

    def check(self, scenario: Scenario) -> None:
        async def main() -> None:
            async with self.opened() as store:
                await scenario(store)

        asyncio.run(main())

    def test_unknown_positions_are_absent(self) -> None:
        async def scenario(store: Store) -> None:
            assert await store.load_positions(["A", "B"]) == {}

        self.check(scenario)

    def test_write_then_load_round_trips(self) -> None:
        async def scenario(store: Store) -> None:
            write = _write("A", 1, 0, updated_at=5, demand={"web": 2})
            assert await store.write_batch([write]) == []
            assert await store.load_positions(["A", "B"]) == {"A": write.position}

        self.check(scenario)

    def test_stale_version_refuses_the_whole_batch(self) -> None:
        async def scenario(store: Store) -> None:
            await store.write_batch([_write("A", 1, 0)])
            conflicts = await store.write_batch([_write("B", 1, 0), _write("A", 2, 0)])
            assert conflicts == ["A"]
            assert await store.load_positions(["A", "B"]) == {"A": Position(sku="A", version=1)}

        self.check(scenario)

    def test_order_and_rma_states_round_trip(self) -> None:
        async def scenario(store: Store) -> None:
            order = OrderState(order_id="o1", channel="web", lines={"1": OrderLine("A", 2, None)})
            rma = RmaState(rma_id="r1", lines={"1": RmaLine("A", 1, 0, 0)})
            await store.save_states([order, rma])
            assert await store.load_orders(["o1", "o2"]) == {"o1": order}
            assert await store.load_rmas(["r1", "o1"]) == {"r1": rma}

        self.check(scenario)

    def test_a_state_is_never_rolled_back_by_a_late_writer(self) -> None:
        async def scenario(store: Store) -> None:
            newer = OrderState(order_id="o1", channel="web", wm=(0, 9, 0), src="orders/0")
            older = OrderState(order_id="o1", channel="app", wm=(0, 5, 0), src="orders/0")
            await store.save_states([newer])
            await store.save_states([older])
            assert await store.load_orders(["o1"]) == {"o1": newer}
            moved = OrderState(order_id="o1", channel="b2b", wm=(1, 0, 0), src="other/1")
            await store.save_states([moved])
            assert await store.load_orders(["o1"]) == {"o1": moved}

        self.check(scenario)


class TestMemoryStore(StoreContract):
    """The memory store keeps the contract."""

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Store]:
        yield MemoryStore()


class TestRedisStore(StoreContract):
    """The Redis store keeps the contract, and writes the layout the API reads."""

    @pytest.fixture(autouse=True)
    def _url(self, redis_url: str) -> None:
        self.url = redis_url

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Store]:
        store = RedisStore.from_url(self.url, Keys("t"))
        try:
            yield store
        finally:
            await store.close()

    def test_a_batch_larger_than_one_script_call_is_written_whole(self) -> None:
        count = WRITE_CHUNK * 2 + 1

        async def scenario(store: Store) -> None:
            skus = [f"S{i}" for i in range(count)]
            assert await store.write_batch([_write(s, 1, 0) for s in skus]) == []
            loaded = await store.load_positions(skus)
            assert sorted(p.version for p in loaded.values()) == [1] * count

        self.check(scenario)

    def test_batch_writes_hash_and_change_stream(self) -> None:
        async def scenario(store: Store) -> None:
            await store.write_batch([_write("A", 1, 0), _write("B", 1, 0)])

        self.check(scenario)
        keys = Keys("t")
        client = redis.Redis.from_url(self.url)
        try:
            assert client.hget(keys.sku("A"), "v") == b"1"
            proj = client.hget(keys.sku("B"), "proj")
            assert isinstance(proj, bytes)
            assert projection_decoder.decode(proj).sku == "B"
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
