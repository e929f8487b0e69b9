"""One suite, two stores: the Redis store (against a real redis-server) and the memory store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import msgspec
import pytest
import redis

from stocksync.codecs.holds import StoredLine, snapshot_decoder
from stocksync.codecs.state import NodePosition, OrderLine, OrderState, Position, RmaLine, RmaState
from stocksync.readmodel import core
from stocksync.readmodel.holds import fingerprint
from stocksync.store import (
    WRITE_CHUNK,
    MemoryServer,
    MemoryStore,
    ModelLost,
    RedisStore,
    StoreUnavailable,
    SwitchRefused,
    Write,
)
from stocksync.store.holds import Created, HoldStore
from stocksync.store.layout import (
    CLUSTER_SHARDS,
    SERVED_FIELD,
    Change,
    Keys,
    Reload,
    decode_change,
)
from stocksync.store.served import decode_detail, decode_served, served_bytes

Store = MemoryStore | RedisStore
Scenario = Callable[[Store], Awaitable[None]]

TOPOLOGY = core.Topology(
    channels=(
        core.ChannelSpec(name="web", nodes=("dc-east", "dc-west"), buffer=1,
                         low_stock_threshold=5),
        core.ChannelSpec(name="store", nodes=("dc-west",)),
    ),
    safety_defaults={"dc-east": 2},
)
GENERATION = "g20261127T090000000Z"


def _write(sku: str, version: int, expected: int, **fields: object) -> Write:
    position = Position(sku=sku, version=version, **fields)  # type: ignore[arg-type]
    return Write(position, expected)


class StoreContract:
    """What every store must do; subclasses say how to open one and how to lose its data."""

    def opened(self) -> AbstractAsyncContextManager[Store]:
        """A store bound to a fresh generation ``GENERATION`` of namespace ``t``."""
        raise NotImplementedError

    async def lose(self, store: Store) -> None:
        """Empty the store's server, as a Redis restarted without persistence is."""
        raise NotImplementedError

    def check(self, scenario: Scenario) -> None:
        async def main() -> None:
            async with self.opened() as store:
                await scenario(store)

        asyncio.run(main())

    # --- positions ---

    def test_unknown_positions_are_absent(self) -> None:
        async def scenario(store: Store) -> None:
            assert await store.load_positions(["A", "B"]) == {}

        self.check(scenario)

    def test_write_then_load_round_trips(self) -> None:
        async def scenario(store: Store) -> None:
            write = _write("A", 1, 0, updated_at=5, demand={"web": 2})
            assert await store.write_batch([write]) == []
            assert await store.load_positions(["A", "B"]) == {"A": write.position}
            assert await store.load_versions(["A", "B"]) == {"A": 1}

        self.check(scenario)

    def test_stale_version_refuses_the_whole_batch(self) -> None:
        async def scenario(store: Store) -> None:
            await store.write_batch([_write("A", 1, 0)])
            conflicts = await store.write_batch([_write("B", 1, 0), _write("A", 2, 0)])
            assert conflicts == ["A"]
            assert await store.load_positions(["A", "B"]) == {"A": Position(sku="A", version=1)}

        self.check(scenario)

    def test_served_form_is_the_cores_figures_ready_to_serve(self) -> None:
        position = Position(
            sku="A", version=3, updated_at=1_795_770_000_512,
            nodes={"dc-east": NodePosition(snap=10, reserved=1),
                   "dc-west": NodePosition(snap=4, received=3, inspected=1)},
            demand={"web": 2},
        )

        async def scenario(store: Store) -> None:
            await store.write_batch([Write(position, 0)])
            cursor, pages = 0, []
            while True:
                cursor, page = await store.served_page(cursor, 10)
                pages += page
                if cursor == 0:
                    break
            (raw,) = pages
            assert raw == served_bytes(position, TOPOLOGY)
            served = decode_served(raw)
            assert (served.sku, served.version) == ("A", 3)
            web, shop = served.channels
            expected = core.channel_available(position, TOPOLOGY.channels[0], TOPOLOGY)
            assert (web.channel, web.available) == ("web", expected) == ("web", 8)
            assert web.document == (
                b'{"sku":"A","channel":"web","available":8,"status":"in_stock","version":3,'
                b'"updated_at":"2026-11-27T09:00:00.512Z","held":0}'
            )
            assert (shop.channel, shop.available) == ("store", 4)
            views = {n: core.node_view(position, n, TOPOLOGY) for n in ("dc-east", "dc-west")}
            assert decode_detail(served.detail) == [
                [(n, v.available, v.on_hand, v.reserved, v.quarantine, v.safety_stock)
                 for n, v in views.items()],
                [("dc-west", 4, 4, 0, 2, 0)],
            ]
            assert await store.sku_count() == 1
            assert await store.any_sku()

        self.check(scenario)

    # --- order and RMA states ---

    def test_order_and_rma_states_round_trip(self) -> None:
        async def scenario(store: Store) -> None:
            line = OrderLine(sku="A", open=2, node=None)
            order = OrderState(order_id="o1", channel="web", lines={"1": line})
            rma_line = RmaLine(sku="A", authorized=1, received=0, inspected=0)
            rma = RmaState(rma_id="r1", lines={"1": rma_line})
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

    # --- the change stream ---

    def test_every_write_appends_its_change(self) -> None:
        async def scenario(store: Store) -> None:
            await store.write_batch([_write("A", 1, 0), _write("B", 1, 0)])
            await store.write_batch([_write("C", 1, 0)], announce=False)
            entries = await store.read_changes("0-0", 10, None)
            changes = [decode_change(fields) for _, fields in entries]
            assert [c.sku for c in changes if isinstance(c, Change)] == ["A", "B"]
            first = changes[0]
            assert isinstance(first, Change) and first.version == 1
            assert first.served == served_bytes(Position(sku="A", version=1), TOPOLOGY)
            after = await store.read_changes(entries[0][0].decode(), 10, None)
            assert [e[0] for e in after] == [entries[1][0]]

        self.check(scenario)

    def test_a_change_carries_the_correlation_id_of_its_last_event(self) -> None:
        async def scenario(store: Store) -> None:
            await store.write_batch([
                Write(Position(sku="A", version=1), 0, correlation_id="ord-9912"),
                _write("B", 1, 0),
            ])
            shards = getattr(getattr(store, "keys", None), "shards", 1)
            entries = [
                entry for shard in range(shards)
                for entry in await store.read_changes("0-0", 10, None, shard)
            ]
            changes = [decode_change(fields) for _, fields in entries]
            assert sorted(
                (c.sku, c.correlation_id) for c in changes if isinstance(c, Change)
            ) == [("A", "ord-9912"), ("B", None)]

        self.check(scenario)

    # --- identity and generations ---

    def test_a_lost_model_refuses_every_read_and_write(self) -> None:
        async def scenario(store: Store) -> None:
            await store.write_batch([_write("A", 1, 0)])
            await store.save_states([OrderState(order_id="o1", channel="web")])
            assert await store.model_present()
            await self.lose(store)
            assert not await store.model_present()
            with pytest.raises(ModelLost):
                await store.write_batch([_write("A", 1, 0)])
            with pytest.raises(ModelLost):
                await store.load_positions(["A"])
            with pytest.raises(ModelLost):
                await store.load_orders(["o1"])
            with pytest.raises(ModelLost):
                await store.load_rmas(["r1"])
            with pytest.raises(ModelLost):
                await store.save_states([OrderState(order_id="o2", channel="web")])
            # Nothing was written over the lost model: no key came back.
            assert await store.sku_count() == 0
            assert await store.live_namespace() == ("t", None)

        self.check(scenario)

    def test_a_new_generation_is_switched_to_and_announced(self) -> None:
        async def scenario(store: Store) -> None:
            await store.write_batch([_write("A", 1, 0)])
            rebuilt = "g20261127T100000000Z"
            beside = store.beside(f"t:{rebuilt}")
            await beside.begin_generation(rebuilt)
            await beside.write_batch([_write("A", 7, 0)], announce=False)
            assert await store.live_namespace() == ("t", GENERATION)
            await beside.switch_to(rebuilt, None)
            with pytest.raises(SwitchRefused):
                await beside.switch_to("g20261127T110000000Z", None)
            assert await store.live_namespace() == (f"t:{rebuilt}", rebuilt)
            entries = await store.read_changes("0-0", 10, None)
            assert decode_change(entries[-1][1]) == Reload(f"t:{rebuilt}", rebuilt)
            assert await store.resolve() == f"t:{rebuilt}"
            assert store.generation == rebuilt
            assert await store.load_versions(["A"]) == {"A": 7}
            # The old generation's writer is still bound to its own model, which is intact.
            assert await store.model_present()

        self.check(scenario)

    # --- workers and the rebuild lock ---

    def test_heartbeats_name_live_workers(self) -> None:
        async def scenario(store: Store) -> None:
            assert await store.live_workers(15) == []
            await store.beat("w1", 15)
            await store.beat("w2", 15)
            assert await store.live_workers(15) == ["w1", "w2"]
            await store.forget_worker("w1")
            assert await store.live_workers(15) == ["w2"]

        self.check(scenario)

    def test_one_rebuilder_at_a_time(self) -> None:
        async def scenario(store: Store) -> None:
            assert await store.take_rebuild_lock("w1", 30)
            assert not await store.take_rebuild_lock("w2", 30)
            assert await store.renew_rebuild_lock("w1", 30)
            assert not await store.renew_rebuild_lock("w2", 30)
            await store.release_rebuild_lock("w2")  # not its lock: nothing happens
            assert not await store.take_rebuild_lock("w2", 30)
            await store.release_rebuild_lock("w1")
            assert await store.take_rebuild_lock("w2", 30)

        self.check(scenario)


class TestMemoryStore(StoreContract):
    """The memory store keeps the contract."""

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Store]:
        store = MemoryStore("t", topology=TOPOLOGY, server=MemoryServer())
        await store.begin_generation(GENERATION)
        yield store

    async def lose(self, store: Store) -> None:
        assert isinstance(store, MemoryStore)
        store.server.lose()


class TestRedisStore(StoreContract):
    """The Redis store keeps the contract, and writes the layout the API reads."""

    @pytest.fixture(autouse=True)
    def _url(self, redis_url: str) -> None:
        self.url = redis_url

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Store]:
        store = RedisStore.from_url(self.url, Keys("t"), topology=TOPOLOGY)
        try:
            await store.begin_generation(GENERATION)
            yield store
        finally:
            await store.close()

    async def lose(self, store: Store) -> None:
        assert isinstance(store, RedisStore)
        await store.client.flushdb()

    def test_a_batch_larger_than_one_script_call_is_written_whole(self) -> None:
        count = WRITE_CHUNK * 2 + 1

        async def scenario(store: Store) -> None:
            skus = [f"S{i}" for i in range(count)]
            assert await store.write_batch([_write(s, 1, 0) for s in skus]) == []
            loaded = await store.load_positions(skus)
            assert sorted(p.version for p in loaded.values()) == [1] * count
            states = [OrderState(order_id=f"o{i}", channel="web") for i in range(count)]
            await store.save_states(states)
            assert len(await store.load_orders([s.order_id for s in states])) == count

        self.check(scenario)

    def test_states_are_hashes_with_a_time_to_live(self) -> None:
        async def scenario(store: Store) -> None:
            await store.save_states([OrderState(order_id="o1", channel="web", src="orders/0")])

        self.check(scenario)
        client = redis.Redis.from_url(self.url)
        try:
            key = Keys("t").order("o1")
            assert client.type(key) == b"hash"
            assert client.hget(key, "src") == b"orders/0"
            assert client.ttl(key) > 0
            assert client.type(Keys("t").sku("A")) == b"none"
        finally:
            client.close()


def test_unreachable_redis_is_store_unavailable() -> None:
    async def main() -> None:
        store = RedisStore.from_url("redis://127.0.0.1:1/0", Keys(), generation="g")
        try:
            with pytest.raises(StoreUnavailable, match="positions"):
                await store.load_positions(["A"])
        finally:
            await store.close()

    asyncio.run(main())


class TestRedisClusterStore(StoreContract):
    """The Redis store keeps the contract on a three-master Redis Cluster."""

    @pytest.fixture(autouse=True)
    def _url(self, redis_cluster_url: str) -> None:
        self.url = redis_cluster_url

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Store]:
        store = RedisStore.from_url(self.url, Keys("t"), topology=TOPOLOGY, cluster=True)
        try:
            await store.begin_generation(GENERATION)
            yield store
        finally:
            await store.close()

    async def lose(self, store: Store) -> None:
        assert isinstance(store, RedisStore)
        await store.client.flushall()  # every primary

    def test_stale_version_refuses_the_whole_batch(self) -> None:
        """On a cluster "the whole batch" is the batch's SKUs of one shard (one slot)."""

        async def scenario(store: Store) -> None:
            assert isinstance(store, RedisStore)
            keys = store.keys
            shard = keys.shard_of("A")
            same = next(f"B{i}" for i in range(100) if keys.shard_of(f"B{i}") == shard)
            other = next(f"C{i}" for i in range(100) if keys.shard_of(f"C{i}") != shard)
            await store.write_batch([_write("A", 1, 0)])
            batch = [_write(same, 1, 0), _write(other, 1, 0), _write("A", 2, 0)]
            assert await store.write_batch(batch) == ["A"]
            loaded = await store.load_positions(["A", same, other])
            # The other shard's SKU is written: after the conflict the applier reloads and
            # re-applies, and its watermarks skip what that write already holds.
            assert set(loaded) == {"A", other} and loaded["A"].version == 1

        self.check(scenario)

    def test_every_write_appends_its_change(self) -> None:
        """On a cluster each SKU's change goes to its shard's stream, in write order."""

        async def scenario(store: Store) -> None:
            assert isinstance(store, RedisStore)
            keys = store.keys
            shard = keys.shard_of("A")
            same = next(f"B{i}" for i in range(100) if keys.shard_of(f"B{i}") == shard)
            await store.write_batch([_write("A", 1, 0), _write(same, 1, 0)])
            await store.write_batch([_write("C", 1, 0)], announce=False)
            entries = await store.read_changes("0-0", 10, None, shard)
            changes = [decode_change(fields) for _, fields in entries]
            assert [c.sku for c in changes if isinstance(c, Change)] == ["A", same]
            after = await store.read_changes(entries[0][0].decode(), 10, None, shard)
            assert [e[0] for e in after] == [entries[1][0]]
            c_shard = keys.shard_of("C")
            if c_shard != shard:
                assert await store.read_changes("0-0", 10, None, c_shard) == []

        self.check(scenario)

    def test_a_batch_spreads_over_every_master_and_each_stream(self) -> None:
        skus = [f"S{i}" for i in range(WRITE_CHUNK + 500)]

        async def scenario(store: Store) -> None:
            assert isinstance(store, RedisStore)
            assert await store.write_batch([_write(s, 1, 0) for s in skus]) == []
            assert await store.sku_count() == len(skus)
            per_node = [
                await store.client.execute_command("DBSIZE", target_nodes=node)
                for node in store.client.get_primaries()  # type: ignore[union-attr]
            ]
            assert len(per_node) == 3 and all(size > 100 for size in per_node)
            announced: set[str] = set()
            for shard in range(store.keys.shards):
                for _id, fields in await store.read_changes("0-0", 10_000, None, shard):
                    change = decode_change(fields)
                    assert isinstance(change, Change)
                    assert store.keys.shard_of(change.sku) == shard
                    announced.add(change.sku)
            assert announced == set(skus)
            cursor, served = 0, []
            while True:
                cursor, page = await store.served_page(cursor, 300)
                served += [decode_served(raw).sku for raw in page]
                if cursor == 0:
                    break
            assert sorted(served) == sorted(skus)

        self.check(scenario)

    def test_one_master_losing_its_data_loses_the_model(self) -> None:
        async def scenario(store: Store) -> None:
            assert isinstance(store, RedisStore)
            assert await store.write_batch([_write("A", 1, 0)]) == []
            node = store.client.get_primaries()[1]  # type: ignore[union-attr]
            await store.client.execute_command("FLUSHALL", target_nodes=node)
            assert not await store.model_present()
            assert (await store.live_namespace())[1] is None

        self.check(scenario)


# --- checkout holds ------------------------------------------------------------------


def _stocked(sku: str, units: int) -> Write:
    """A SKU whose "store" channel (dc-west alone, no buffer, no safety) has ``units``."""
    return Write(Position(sku=sku, version=1, nodes={"dc-west": NodePosition(snap=units)}), 0)


#: SKUs on the shards 0, 1, 8 and 11 of a clustered model (shard order: MANY, B, MUG, A).
_SKUS = {"MANY": 0, "B": 1, "MUG-BLUE": 8, "A": 11}


class HoldContract:
    """What the hold store does on one Redis (one script per operation) and on a cluster
    (the lines decided shard group by shard group): the same answers."""

    url: str
    cluster: bool

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[tuple[RedisStore, HoldStore]]:
        store = RedisStore.from_url(self.url, Keys("t"), topology=TOPOLOGY, cluster=self.cluster)
        holds = HoldStore(store.client, lambda: store.keys, timeout=5.0)
        try:
            await store.begin_generation(GENERATION)
            stock = {"MANY": 100, "B": 3, "MUG-BLUE": 5, "A": 10}
            assert await store.write_batch([_stocked(s, n) for s, n in stock.items()]) == []
            yield store, holds
        finally:
            await holds.close()
            await store.close()

    def check(self, scenario: Callable[[RedisStore, HoldStore], Awaitable[None]]) -> None:
        async def main() -> None:
            async with self.opened() as (store, holds):
                await scenario(store, holds)

        asyncio.run(main())

    @staticmethod
    async def _create(
        holds: HoldStore, hold_id: str, *lines: tuple[str, int], partial: bool = False
    ) -> Created:
        return await holds.create(
            hold_id, "store", lines, fingerprint=fingerprint("store", lines),
            ttl_ms=60_000, partial=partial,
        )

    @staticmethod
    async def _held(store: RedisStore, holds: HoldStore) -> dict[str, list[tuple[str, int]]]:
        """Every SKU's hold lines as a replica loads them: {sku: [(hold_id, qty)]}."""
        found: dict[str, list[tuple[str, int]]] = {}
        cursor = 0
        while True:
            cursor, pairs = await holds.held_page(cursor, 2)
            for sku, raw in pairs:
                snapshot = snapshot_decoder.decode(raw)
                lines = [(line.hold_id, line.qty) for line in snapshot.lines]
                if lines:
                    found[sku] = sorted(lines)
            if cursor == 0:
                return found

    def test_the_skus_sit_in_the_shards_the_tests_assume(self) -> None:
        keys = Keys("t", shards=CLUSTER_SHARDS)
        assert {sku: keys.shard_of(sku) for sku in _SKUS} == _SKUS

    def test_a_hold_over_four_shards_is_granted_found_again_and_conflicts_otherwise(
        self,
    ) -> None:
        async def scenario(store: RedisStore, holds: HoldStore) -> None:
            lines = (("A", 2), ("MUG-BLUE", 1), ("B", 3), ("MANY", 1))
            created = await self._create(holds, "h1", *lines)
            assert created.outcome == "created" and created.record is not None
            assert created.record.status == "held"
            assert [(x.sku, x.held) for x in created.record.lines] == [
                ("A", 2), ("MUG-BLUE", 1), ("B", 3), ("MANY", 1)
            ]
            assert await self._held(store, holds) == {
                "A": [("h1", 2)], "MUG-BLUE": [("h1", 1)], "B": [("h1", 3)], "MANY": [("h1", 1)]
            }
            again = await self._create(holds, "h1", *reversed(lines))
            assert again.outcome == "exists" and again.record == msgspec.structs.replace(
                created.record, now_ms=again.now_ms
            )
            assert (await self._create(holds, "h1", ("A", 1))).outcome == "conflict"
            found = await holds.get("h1")
            assert found is not None and found.lines == created.record.lines
            assert await holds.get("nope") is None

        self.check(scenario)

    def test_all_or_nothing_short_in_one_shard_holds_nothing_in_any(self) -> None:
        async def scenario(store: RedisStore, holds: HoldStore) -> None:
            await self._create(holds, "other", ("A", 9))  # 1 of A left
            refused = await self._create(holds, "h1", ("MANY", 5), ("B", 4), ("A", 2))
            assert refused.outcome == "short"
            # What each line's channel had: also past the first short shard, as on one Redis.
            assert refused.available == [100, 3, 1]
            assert await self._held(store, holds) == {"A": [("other", 9)]}
            assert await holds.get("h1") is None
            taken = await self._create(holds, "h1", ("MANY", 5), ("B", 3), ("A", 1))
            assert taken.outcome == "created"

        self.check(scenario)

    def test_partial_holds_what_each_line_has(self) -> None:
        async def scenario(store: RedisStore, holds: HoldStore) -> None:
            created = await self._create(holds, "h1", ("B", 5), ("A", 4), partial=True)
            assert created.record is not None and created.record.status == "partial"
            assert [(x.sku, x.requested, x.held) for x in created.record.lines] == [
                ("B", 5, 3), ("A", 4, 4)
            ]
            zero = await self._create(holds, "h2", ("B", 1), partial=True)
            assert zero.record is not None and zero.record.lines[0].held == 0
            assert await self._held(store, holds) == {"B": [("h1", 3)], "A": [("h1", 4)]}

        self.check(scenario)

    def test_release_extend_and_convert_change_every_shard(self) -> None:
        async def scenario(store: RedisStore, holds: HoldStore) -> None:
            await self._create(holds, "h1", ("A", 1), ("B", 1))
            extended = await holds.extend("h1", 3_600_000)
            assert extended is not None and extended[1]
            assert extended[0].expires_ms >= extended[0].now_ms + 3_599_000
            released = await holds.release("h1")
            assert released is not None and released[1]
            assert released[0].status == "released"
            assert await self._held(store, holds) == {}
            again = await holds.release("h1")
            assert again is not None and not again[1]
            ended = await holds.extend("h1", 1000)
            assert ended is not None and not ended[1]

            await self._create(holds, "h2", ("A", 2), ("MUG-BLUE", 1), ("MANY", 1))
            taken = await holds.convert("h2", "o-1", ["A", "MANY", "ZZZ"])
            assert taken == {"A", "MANY"}
            # The SKU the order lacks is released now; the others' lines end in the
            # applier's batch write (not here).
            assert await self._held(store, holds) == {"A": [("h2", 2)], "MANY": [("h2", 1)]}
            assert await holds.convert("h2", "o-1", ["A", "MANY"]) == {"A", "MANY"}
            assert await holds.convert("h2", "o-2", ["A"]) == frozenset()
            found = await holds.get("h2")
            assert found is not None and found.status == "converted"

        self.check(scenario)


class TestHoldsOnOneRedis(HoldContract):
    cluster = False

    @pytest.fixture(autouse=True)
    def _url(self, redis_url: str) -> None:
        self.url = redis_url


class TestHoldsOnARedisCluster(HoldContract):
    cluster = True

    @pytest.fixture(autouse=True)
    def _url(self, redis_cluster_url: str) -> None:
        self.url = redis_cluster_url

    def test_a_hold_whose_creator_died_is_resumed_by_a_retry_or_released(self) -> None:
        """A process that died after granting one shard group: the record says pending,
        the lines count (never an oversell); the same request again finishes the hold
        without granting twice, and DELETE of another such hold drops its lines."""

        async def scenario(store: RedisStore, holds: HoldStore) -> None:
            sharded = holds._sharded
            assert sharded is not None
            for hold_id in ("h1", "h2"):
                lines = [StoredLine("B", 2, 0), StoredLine("A", 3, 0)]
                keys = store.keys
                begun = await sharded._call(
                    "SHARDED_HOLD_BEGIN", [keys.hold(hold_id)],
                    [fingerprint("store", [("B", 2), ("A", 3)]), "store", 60_000, 0,
                     86_400_000, msgspec.msgpack.encode(lines), 0],  # lease: over at once
                )
                await sharded._call(
                    "SHARDED_HOLD_GRANT", [keys.changes(1), keys.sku("B"), keys.held("B")],
                    [hold_id, "store", int(begun[2]), 0, 1000, 1, "B", 2],
                )
            with pytest.raises(StoreUnavailable, match="being decided"):
                await holds.get("h1")
            # Its creator's lease still running: an identical request is told to retry.
            await sharded._call(
                "SHARDED_HOLD_BEGIN", [store.keys.hold("h3")],
                [fingerprint("store", [("B", 1)]), "store", 60_000, 0, 86_400_000,
                 msgspec.msgpack.encode([StoredLine("B", 1, 0)]), 60_000],
            )
            with pytest.raises(StoreUnavailable, match="another request"):
                await self._create(holds, "h3", ("B", 1))
            b_version = await store.client.hget(store.keys.held("B"), "v")
            resumed = await self._create(holds, "h1", ("A", 3), ("B", 2))
            assert resumed.outcome == "created" and resumed.record is not None
            assert resumed.record.status == "held"
            # B's line, granted by the dead try with this expiry, kept as it was.
            assert await store.client.hget(store.keys.held("B"), "v") == b_version
            released = await holds.release("h2")
            assert released is not None and released[1]
            assert await self._held(store, holds) == {"B": [("h1", 2)], "A": [("h1", 3)]}

        self.check(scenario)

    def test_a_retry_after_a_refusal_whose_undo_died_replaces_the_lines_left(self) -> None:
        """A creator wrote its refusal (A short) and died before dropping B's line, which
        counts until its expiry. The hold_id then names nothing (a refusal is forgotten),
        so a request with it decides again, here with another TTL and B's quantity: the
        line left of the ended try is not this hold's, so B holds what this request asked
        for, until this hold's expiry."""

        async def scenario(store: RedisStore, holds: HoldStore) -> None:
            sharded = holds._sharded
            assert sharded is not None
            keys = store.keys
            assert (await self._create(holds, "other", ("A", 9))).outcome == "created"
            lines = (("B", 2), ("A", 2))
            begun = await sharded._call(
                "SHARDED_HOLD_BEGIN", [keys.hold("h1")],
                [fingerprint("store", lines), "store", 60_000, 0, 86_400_000,
                 msgspec.msgpack.encode([StoredLine(s, q, 0) for s, q in lines]), 60_000],
            )
            first_exp = int(begun[2])
            for shard, sku, qty, outcome in ((1, "B", 2, b"granted"), (11, "A", 2, b"short")):
                reply = await sharded._call(
                    "SHARDED_HOLD_GRANT",
                    [keys.changes(shard), keys.sku(sku), keys.held(sku),
                     keys.hold_sealed(shard, "h1")],
                    ["h1", "store", first_exp, 0, 1000, 1, sku, qty],
                )
                assert reply[0] == outcome
            await sharded._call(
                "SHARDED_HOLD_FINISH", [keys.hold("h1")],
                [fingerprint("store", lines), "refused",
                 msgspec.msgpack.encode([StoredLine(s, q, 0) for s, q in lines]), 60_000],
            )
            # Died here, before dropping B's line.
            assert await self._held(store, holds) == {"B": [("h1", 2)], "A": [("other", 9)]}
            assert await holds.get("h1") is None
            released = await holds.release("other")
            assert released is not None and released[1]

            again = (("B", 1), ("A", 2))
            created = await holds.create(
                "h1", "store", again, fingerprint=fingerprint("store", again),
                ttl_ms=900_000, partial=False,
            )
            assert created.outcome == "created" and created.record is not None
            assert [(x.sku, x.requested, x.held) for x in created.record.lines] == [
                ("B", 1, 1), ("A", 2, 2)
            ]
            assert await self._held(store, holds) == {"B": [("h1", 1)], "A": [("h1", 2)]}
            for sku in ("B", "A"):
                _, _, line_exp = msgspec.msgpack.decode(
                    await store.client.hget(keys.held(sku), "h:h1")
                )
                assert line_exp == created.record.expires_ms, sku
            assert int(await store.client.hget(keys.held("B"), "t:store")) == 1

        self.check(scenario)

    @pytest.mark.parametrize("second", ["finished", "pending"])
    def test_a_refused_creators_undo_after_a_new_try_leaves_the_new_try_s_line(
        self, second: str
    ) -> None:
        """All or nothing, A short: the creator (first try) writes the refusal, which
        forgets the hold_id; before it drops B's line, the same request again (second
        try, another process) claims the record afresh and grants B (then A, and
        finishes; or is still pending). The first try's undo then lands: it drops only
        the lines of its try (its expiry), so B's line of the second try stays and the
        hold is held of what it says, with the held sums and expiry index exact."""

        async def scenario(store: RedisStore, holds: HoldStore) -> None:
            keys = store.keys
            lines = (("B", 2), ("A", 2))
            other = HoldStore(store.client, lambda: store.keys, timeout=5.0)
            seen: list[str] = []
            first: list[int] = []  # the first try's Begin: now, expiry
            granted, go = asyncio.Event(), asyncio.Event()
            second_try: list[asyncio.Task[Created]] = []

            async def paused(name: str, args: Any, reply: Any) -> None:
                if name == "SHARDED_HOLD_GRANT" and not granted.is_set():
                    granted.set()  # the second try's B granted, its A not yet
                    await go.wait()

            if second == "pending":
                _hook(other, after=paused)

            async def after(name: str, args: Any, reply: Any) -> None:
                seen.append(name)
                if name == "SHARDED_HOLD_BEGIN":
                    first.extend((int(reply[1]), int(reply[2])))
                if name != "SHARDED_HOLD_FINISH":
                    return
                assert reply[1] == b"refused" and int(reply[5]) == 1
                assert await _held_hash(store, "B") == (2, {"h1": 2})
                # The second try's Begin in a later millisecond than the first's (a try
                # in the same one would have its expiry).
                await _redis_clock_past(store, first[0])
                released = await other.release("other")
                assert released is not None and released[1]
                second_try.append(asyncio.create_task(self._create(other, "h1", *lines)))
                if second == "pending":
                    await granted.wait()
                    assert await _stored_status(store, "h1") == "pending"
                else:
                    await second_try[0]
                # The second try's B line: its own, of its expiry.
                assert await _held_hash(store, "B") == (2, {"h1": 2})
                _, _, exp = msgspec.msgpack.decode(await store.client.hget(keys.held("B"), "h:h1"))
                assert exp != first[1]

            try:
                assert (await self._create(holds, "other", ("A", 9))).outcome == "created"
                _hook(holds, after=after)
                refused = await self._create(holds, "h1", *lines)
                assert refused.outcome == "short" and refused.available == [3, 1]
                assert seen == [
                    "SHARDED_HOLD_BEGIN", "SHARDED_HOLD_GRANT", "SHARDED_HOLD_GRANT",
                    "SHARDED_HOLD_FINISH", "SHARDED_HOLD_DROP", "SHARDED_HOLD_DROP",
                ], seen
                # The first try's undo has run: the second try's B line is still there.
                assert await _held_hash(store, "B") == (2, {"h1": 2})
                go.set()
                created = await second_try[0]
                assert created.outcome == "created" and created.record is not None
                assert created.record.status == "held"
                assert [(x.sku, x.requested, x.held) for x in created.record.lines] == [
                    ("B", 2, 2), ("A", 2, 2)
                ]
                exp = created.record.expires_ms
                assert exp != first[1]
                for sku in ("B", "A"):
                    assert await _held_hash(store, sku) == (2, {"h1": 2}), sku
                    _, _, line_exp = msgspec.msgpack.decode(
                        await store.client.hget(keys.held(sku), "h:h1")
                    )
                    assert line_exp == exp, sku
                    assert await store.client.zscore(keys.held_expiry(sku), "h1") == exp, sku
                assert await _reader(store, ["B", "A"]) == {"B": 1, "A": 8}
                found = await holds.get("h1")
                assert found is not None and found.status == "held"

                # The script: a drop naming another expiry (or channel) leaves the line; one
                # naming none (an older caller) drops whatever line the hold has.
                sharded = other._sharded
                assert sharded is not None
                b_keys = [keys.changes(1), keys.held("B")]
                version = await store.client.hget(keys.held("B"), "v")
                for tried in ([first[1], "store"], [exp, "web"]):
                    assert await sharded._call(
                        "SHARDED_HOLD_DROP", b_keys, ["h1", 1000, "B", *tried]
                    ) == 0
                assert await store.client.hget(keys.held("B"), "v") == version
                assert await sharded._call("SHARDED_HOLD_DROP", b_keys, ["h1", 1000, "B"]) == 1
                assert await _held_hash(store, "B") == (0, {})
                # A release drops whatever line the hold has.
                released = await other.release("h1")
                assert released is not None and released[1]
                assert await _held_hash(store, "A") == (0, {})
                assert await self._held(store, holds) == {}
            finally:
                go.set()
                await other.close()

        self.check(scenario)

    def test_a_creator_refused_after_a_resumed_try_finished_the_hold_leaves_its_lines(
        self,
    ) -> None:
        """All or nothing, A short for the creator, which is then slower than its lease:
        the same request again (another process) resumes the pending hold, keeps B's line
        (its expiry), grants A (stock freed meanwhile) and finishes it held. The
        creator's refusal then finds the hold held: it drops nothing (the lines are that
        hold's) and answers the hold as it is."""

        async def scenario(store: RedisStore, holds: HoldStore) -> None:
            lines = (("B", 2), ("A", 2))
            other = HoldStore(store.client, lambda: store.keys, timeout=5.0)
            seen: list[str] = []
            resumed: list[Created] = []

            async def after(name: str, args: Any, reply: Any) -> None:
                seen.append(name)
                if name != "SHARDED_HOLD_GRANT" or reply[0] != b"short":
                    return
                # The creator's lease runs out here (it was slow).
                await store.client.hset(store.keys.hold("h1"), "ls", 0)
                released = await other.release("other")
                assert released is not None and released[1]
                resumed.append(await self._create(other, "h1", *lines))

            try:
                assert (await self._create(holds, "other", ("A", 9))).outcome == "created"
                _hook(holds, after=after)
                answered = await self._create(holds, "h1", *lines)
                assert resumed[0].outcome == "created" and resumed[0].record is not None
                assert resumed[0].record.status == "held"
                for sku in ("B", "A"):
                    assert await _held_hash(store, sku) == (2, {"h1": 2}), sku
                assert await _reader(store, ["B", "A"]) == {"B": 1, "A": 8}
                assert answered.outcome == "exists" and answered.record is not None
                assert answered.record.status == "held"
                assert answered.record.lines == resumed[0].record.lines
                assert seen == [
                    "SHARDED_HOLD_BEGIN", "SHARDED_HOLD_GRANT", "SHARDED_HOLD_GRANT",
                    "SHARDED_HOLD_FINISH",
                ], seen  # no drop
            finally:
                await other.close()

        self.check(scenario)

    def test_a_creator_whose_hold_id_another_body_took_meanwhile_answers_its_own_outcome(
        self,
    ) -> None:
        """All or nothing, A short. The creator grants B, then is slower than its lease:
        the same request again (another process) resumes the hold, finds A short and
        refuses it, which forgets the hold_id; a request with another body then takes
        the hold_id and is granted. The creator's A is short too: its answer is its own
        refusal, never the other request's hold, and its undo leaves that hold's line."""

        async def scenario(store: RedisStore, holds: HoldStore) -> None:
            lines = (("B", 2), ("A", 2))
            other = HoldStore(store.client, lambda: store.keys, timeout=5.0)
            begun: list[int] = []
            steps: list[Created] = []

            async def after(name: str, args: Any, reply: Any) -> None:
                if name == "SHARDED_HOLD_BEGIN":
                    begun.append(int(reply[1]))
                if name != "SHARDED_HOLD_GRANT" or steps:
                    return
                assert reply[0] == b"granted"  # B, the creator's first group
                await store.client.hset(store.keys.hold("h1"), "ls", 0)  # its lease ran out
                steps.append(await self._create(other, "h1", *lines))  # resumed, refused
                # The other body's Begin in a later millisecond (its expiry).
                await _redis_clock_past(store, begun[0])
                steps.append(await self._create(other, "h1", ("B", 1)))

            try:
                assert (await self._create(holds, "other", ("A", 9))).outcome == "created"
                _hook(holds, after=after)
                answered = await self._create(holds, "h1", *lines)
                assert [c.outcome for c in steps] == ["short", "created"]
                taken = steps[1].record
                assert taken is not None and taken.status == "held"
                assert [(x.sku, x.requested, x.held) for x in taken.lines] == [("B", 1, 1)]
                assert answered.outcome == "short", answered
                assert answered.available == [3, 1]
                assert await _held_hash(store, "B") == (1, {"h1": 1})
                assert await _held_hash(store, "A") == (9, {"other": 9})
                assert await _reader(store, ["B", "A"]) == {"B": 2, "A": 1}
                found = await holds.get("h1")
                assert found is not None and found.status == "held"
                assert [(x.sku, x.held) for x in found.lines] == [("B", 1)]
            finally:
                await other.close()

        self.check(scenario)

    def test_an_order_converting_a_hold_still_being_decided_takes_it_over_exactly(
        self,
    ) -> None:
        """The race of a conversion with the hold's creator, step by step: the creator
        has granted its first shard group when the order translator converts the hold;
        the applier writes the order's reservation; the creator goes on. After every
        script call, what a reader is served per (sku, channel) is what the contract
        says: the order's SKUs' lines stop counting in the step the reservation starts,
        the SKU the order lacks is released (never granted here), and the creator
        grants nothing after the conversion and answers the hold as converted."""
        stock = {"B": 3, "MUG-BLUE": 5, "A": 10}
        counted: dict[str, int] = {}  # the hold's lines that count, per the contract
        reserved: dict[str, int] = {}  # the order's reservations, once written

        def oracle() -> dict[tuple[str, str], int]:
            out = {}
            for sku, units in stock.items():
                pre = units - reserved.get(sku, 0)
                out[(sku, "store")] = max(0, pre - counted.get(sku, 0))
                out[(sku, "web")] = max(0, pre - 1)  # web: dc-west less its buffer of 1
            return out

        async def scenario(store: RedisStore, holds: HoldStore) -> None:
            sharded = holds._sharded
            assert sharded is not None
            steps: list[str] = []

            async def served() -> dict[tuple[str, str], int]:
                lines = await self._held(store, holds)
                out = {}
                for sku in stock:
                    raw = await store.client.hget(store.keys.sku(sku), SERVED_FIELD)
                    for channel in decode_served(raw).channels:
                        held = sum(q for _, q in lines.get(sku, [])) if (
                            channel.channel == "store") else 0
                        out[(sku, channel.channel)] = max(0, channel.available - held)
                return out

            async def check(step: str) -> None:
                steps.append(step)
                assert await served() == oracle(), f"after {steps}"

            original = sharded._call

            async def call(name: str, keys: Any, args: Any, **kw: Any) -> Any:
                reply = await original(name, keys, args, **kw)
                if name == "SHARDED_HOLD_GRANT" and reply[0] == b"granted":
                    counted.update(dict(zip(args[6::2], args[7::2], strict=True)))
                await check(name)
                if name == "SHARDED_HOLD_GRANT" and not reserved and not steps.count("conv"):
                    steps.append("conv")
                    # The order translator's conversion (order o-1: B and A, not MUG-BLUE).
                    taken = await holds.convert("h1", "o-1", ["B", "A"])
                    assert taken == {"B", "A"}
                    found = await holds.get("h1")
                    assert found is not None and found.status == "converted"
                    # The applier's batch write of the order's reservations, converting.
                    writes = [
                        Write(Position(sku=sku, version=2, nodes={
                            "dc-west": NodePosition(snap=stock[sku], reserved=qty)}), 1,
                            holds=("h1",) if sku in taken else ())
                        for sku, qty in (("B", 2), ("A", 3))
                    ]
                    assert await store.write_batch(writes) == []
                    reserved.update({"B": 2, "A": 3})
                    counted.pop("B", None)
                    counted.pop("A", None)
                    await check("reservations written")
                return reply

            await check("start")
            sharded._call = call  # type: ignore[method-assign]
            created = await self._create(holds, "h1", ("B", 2), ("MUG-BLUE", 1), ("A", 3))
            sharded._call = original  # type: ignore[method-assign]
            assert created.outcome == "exists" and created.record is not None
            assert created.record.status == "converted"
            # The creator granted B only: MUG-BLUE's and A's shards were sealed first.
            assert [(x.sku, x.held) for x in created.record.lines] == [
                ("B", 2), ("MUG-BLUE", 0), ("A", 0)
            ]
            assert steps.count("SHARDED_HOLD_GRANT") == 2  # B's group, then MUG's: ended
            assert await self._held(store, holds) == {}
            await check("end")
            # The same request again: the hold as it ended; the conversion again: the same.
            again = await self._create(holds, "h1", ("B", 2), ("MUG-BLUE", 1), ("A", 3))
            assert again.outcome == "exists" and again.record is not None
            assert again.record.status == "converted"
            assert await holds.convert("h1", "o-1", ["B", "A"]) == {"B", "A"}
            assert await holds.convert("h1", "o-2", ["B"]) == frozenset()
            await check("again")

        self.check(scenario)

    def test_a_hold_whose_creator_died_pending_and_was_converted_is_not_resumed(
        self,
    ) -> None:
        """The creator died after granting one shard group, an order converted the hold:
        the same request again finds it converted and grants nothing; the line it had
        granted was the order's to take over, the SKU the order lacks is released."""

        async def scenario(store: RedisStore, holds: HoldStore) -> None:
            sharded = holds._sharded
            assert sharded is not None
            keys = store.keys
            lines = (("B", 2), ("MUG-BLUE", 1), ("A", 3))
            begun = await sharded._call(
                "SHARDED_HOLD_BEGIN", [keys.hold("h1")],
                [fingerprint("store", lines), "store", 60_000, 0, 86_400_000,
                 msgspec.msgpack.encode([StoredLine(s, q, 0) for s, q in lines]), 0],
            )
            for shard, sku, qty in ((1, "B", 2), (8, "MUG-BLUE", 1)):
                await sharded._call(
                    "SHARDED_HOLD_GRANT",
                    [keys.changes(shard), keys.sku(sku), keys.held(sku),
                     keys.hold_sealed(shard, "h1")],
                    ["h1", "store", int(begun[2]), 0, 1000, 1, sku, qty],
                )
            assert await holds.convert("h1", "o-1", ["B", "A"]) == {"B", "A"}
            # MUG-BLUE, which the order lacks, released now; B's line until the applier's.
            assert await self._held(store, holds) == {"B": [("h1", 2)]}
            resumed = await self._create(holds, "h1", *lines)
            assert resumed.outcome == "exists" and resumed.record is not None
            assert resumed.record.status == "converted"
            assert await self._held(store, holds) == {"B": [("h1", 2)]}

        self.check(scenario)


# --- a creator and a conversion of the same pending hold, step by step (cluster) -------

#: A SKU of shard 1, B's shard: a hold on B and X3 has one group with both.
_X3_SHARD = 1
Hooks = Callable[[str, Any, Any], Awaitable[None]]


def _hook(holds: HoldStore, *, before: Hooks | None = None, after: Hooks | None = None) -> None:
    """Run ``before`` / ``after`` around each of ``holds``' cluster script calls (name, args,
    reply): where a test makes another process step in."""
    sharded = holds._sharded
    assert sharded is not None
    original = sharded._call

    async def call(name: str, keys: Any, args: Any, **kw: Any) -> Any:
        if before is not None:
            await before(name, args, None)
        reply = await original(name, keys, args, **kw)
        if after is not None:
            await after(name, args, reply)
        return reply

    sharded._call = call  # type: ignore[method-assign]


async def _redis_clock_past(store: RedisStore, ms: int) -> None:
    """Wait until Redis's clock is past millisecond ``ms`` (a Begin from now on gets
    another expiry than one at ``ms``)."""
    while True:
        secs, micros = await store.client.time()
        if secs * 1000 + micros // 1000 > ms:
            return
        await asyncio.sleep(0.001)


async def _held_hash(store: RedisStore, sku: str) -> tuple[int, dict[str, int]]:
    """``sku``'s held hash as stored: its ``t:store`` sum and its lines {hold_id: qty}.
    Checks that every channel's sum and the expiry index agree with the lines."""
    raw = await store.client.hgetall(store.keys.held(sku))
    lines: dict[str, int] = {}
    by_channel: dict[str, int] = {}
    for field, value in raw.items():
        if field.startswith(b"h:"):
            channel, qty, _ = msgspec.msgpack.decode(value)
            lines[field[2:].decode()] = qty
            by_channel[channel] = by_channel.get(channel, 0) + qty
    sums = {f[2:].decode(): int(v) for f, v in raw.items() if f.startswith(b"t:") and int(v)}
    assert sums == by_channel, (sku, raw)
    index = await store.client.zrange(store.keys.held_expiry(sku), 0, -1)
    assert {m.decode() for m in index} == set(lines), (sku, raw, index)
    return sums.get("store", 0), lines


async def _reader(store: RedisStore, skus: Sequence[str]) -> dict[str, int]:
    """What a reader is served on channel "store" per SKU: the pre-hold figure the applier
    wrote (stock less reservations) less the stored held sum."""
    out = {}
    for sku in skus:
        raw = await store.client.hget(store.keys.sku(sku), SERVED_FIELD)
        (channel,) = [c for c in decode_served(raw).channels if c.channel == "store"]
        out[sku] = max(0, channel.available - (await _held_hash(store, sku))[0])
    return out


async def _reserve(
    store: RedisStore, order: Sequence[tuple[str, int]], stock: dict[str, int],
    converting: frozenset[str],
) -> None:
    """The applier's batch write of the order's reservations (version 2 of each SKU),
    converting h1's line of the SKUs in ``converting``."""
    writes = [
        Write(Position(sku=sku, version=2, nodes={
            "dc-west": NodePosition(snap=stock[sku], reserved=qty)}), 1,
            holds=("h1",) if sku in converting else ())
        for sku, qty in order
    ]
    assert await store.write_batch(writes) == []


async def _sealed(store: RedisStore, hold_id: str) -> set[int]:
    """The shards (of those these tests use) in which ``hold_id`` is sealed."""
    return {
        shard for shard in (0, 1, 8, 11)
        if await store.client.exists(store.keys.hold_sealed(shard, hold_id))
    }


async def _stored_status(store: RedisStore, hold_id: str) -> str | None:
    raw = await store.client.hget(store.keys.hold(hold_id), "st")
    return None if raw is None else raw.decode()


class TestACreatorAndAConversionOfOnePendingHold:
    """The interleavings of a hold's creator (Begin, a Grant per shard group, Finish) and
    an order's conversion of the same hold while it is pending, each step driven in turn
    on a real 3-master cluster. After each, the stored held hashes (lines and sums), the
    record and the conversion's answer are what sharded_holds' docstring says: an order's
    SKU stops counting as held in the step its reservation starts (never both, never
    neither), the creator grants nothing in a sealed shard, a refusal and a conversion
    meet in one order only, and nothing is oversold."""

    STOCK: Final = {"MANY": 100, "B": 3, "MUG-BLUE": 5, "A": 10, "X3": 4}

    @pytest.fixture(autouse=True)
    def _url(self, redis_cluster_url: str) -> None:
        self.url = redis_cluster_url

    def check(
        self, scenario: Callable[[RedisStore, HoldStore, HoldStore], Awaitable[None]]
    ) -> None:
        """``scenario(store, api, translator)``: the API's hold store (the creator) and the
        order translator's (the conversion), two processes on one cluster."""

        async def main() -> None:
            store = RedisStore.from_url(self.url, Keys("t"), topology=TOPOLOGY, cluster=True)
            api = HoldStore(store.client, lambda: store.keys, timeout=5.0)
            translator = HoldStore(store.client, lambda: store.keys, timeout=5.0)
            try:
                await store.begin_generation(GENERATION)
                assert await store.write_batch(
                    [_stocked(s, n) for s, n in self.STOCK.items()]
                ) == []
                await scenario(store, api, translator)
            finally:
                await api.close()
                await translator.close()
                await store.close()

        asyncio.run(main())

    def test_the_skus_sit_in_the_shards_the_tests_assume(self) -> None:
        keys = Keys("t", shards=CLUSTER_SHARDS)
        assert keys.shard_of("X3") == _X3_SHARD == keys.shard_of("B")

    async def _held(self, store: RedisStore) -> dict[str, tuple[int, dict[str, int]]]:
        return {sku: await _held_hash(store, sku) for sku in self.STOCK}

    @staticmethod
    def _none(**lines: tuple[int, dict[str, int]]) -> dict[str, tuple[int, dict[str, int]]]:
        """Every SKU's held hash empty but the ``lines`` given."""
        out: dict[str, tuple[int, dict[str, int]]] = {
            sku: (0, {}) for sku in TestACreatorAndAConversionOfOnePendingHold.STOCK
        }
        out.update({sku.replace("_", "-"): v for sku, v in lines.items()})
        return out

    def test_a_conversion_after_the_first_grant_takes_over_exactly_what_was_granted(
        self,
    ) -> None:
        """Begin, the first group's Grant (B and X3), then the conversion (order: B and A),
        then the creator goes on: MUG-BLUE's grant grants nothing (sealed), A's is never
        tried; X3's line, which the order lacks, is dropped by the conversion; B's line
        counts until the applier's write, which starts B's reservation in the same step;
        A, never granted, is the reservation's alone. The creator answers converted with
        the lines it had granted."""

        async def scenario(store: RedisStore, api: HoldStore, translator: HoldStore) -> None:
            grants: list[tuple[list[str], str]] = []
            taken: list[frozenset[str]] = []

            async def after(name: str, args: Any, reply: Any) -> None:
                if name != "SHARDED_HOLD_GRANT":
                    return
                grants.append((list(args[6::2]), reply[0].decode()))
                if len(grants) > 1:
                    return
                # Begun and the first group granted: the hold counts B 2 and X3 1.
                assert await _stored_status(store, "h1") == "pending"
                assert await self._held(store) == self._none(B=(2, {"h1": 2}), X3=(1, {"h1": 1}))
                taken.append(await translator.convert("h1", "o-1", ["B", "A"]))
                assert taken[0] == {"B", "A"}
                assert await _stored_status(store, "h1") == "converted"
                assert await _sealed(store, "h1") == {1, 8, 11}
                # X3, which the order lacks, released; B left to the reservation.
                assert await self._held(store) == self._none(B=(2, {"h1": 2}))

            _hook(api, after=after)
            lines = (("B", 2), ("X3", 1), ("MUG-BLUE", 1), ("A", 3))
            created = await HoldContract._create(api, "h1", *lines)
            assert grants == [(["B", "X3"], "granted"), (["MUG-BLUE"], "ended")]
            assert created.outcome == "exists" and created.record is not None
            assert created.record.status == "converted"
            assert [(x.sku, x.requested, x.held) for x in created.record.lines] == [
                ("B", 2, 2), ("X3", 1, 1), ("MUG-BLUE", 1, 0), ("A", 3, 0)
            ]
            assert await self._held(store) == self._none(B=(2, {"h1": 2}))
            skus = ["B", "A"]
            assert await _reader(store, skus) == {"B": 1, "A": 10}  # B: 3 less 2 held
            await _reserve(store, [("B", 2), ("A", 3)], self.STOCK, taken[0])
            # B: 3 less 2 reserved, no longer held: the same figure, in one step.
            assert await _reader(store, skus) == {"B": 1, "A": 7}
            assert await self._held(store) == self._none()
            # Again: the same request, the same conversion, another order.
            again = await HoldContract._create(api, "h1", *lines)
            assert again.outcome == "exists" and again.record is not None
            assert again.record.lines == created.record.lines
            assert await translator.convert("h1", "o-1", ["B", "A"]) == {"B", "A"}
            assert await translator.convert("h1", "o-2", ["B", "A"]) == frozenset()
            assert await self._held(store) == self._none()

        self.check(scenario)

    def test_a_conversion_after_the_refusal_changes_nothing_and_the_lines_go(self) -> None:
        """All or nothing, A short in the second group: the creator writes the refusal,
        then the conversion lands, then the creator drops the first group's lines. The
        conversion finds the hold ended and changes nothing (no seal, no line dropped,
        nothing taken over); B's and X3's lines count until the creator drops them (a
        figure that dips and comes back); the order reserves as any order does."""

        async def scenario(store: RedisStore, api: HoldStore, translator: HoldStore) -> None:
            seen: list[str] = []
            taken: list[frozenset[str]] = []

            async def after(name: str, args: Any, reply: Any) -> None:
                seen.append(name)
                if name != "SHARDED_HOLD_FINISH":
                    return
                assert int(reply[5]) == 1 and reply[1] == b"refused"
                held = self._none(B=(2, {"h1": 2}), X3=(1, {"h1": 1}), A=(9, {"other": 9}))
                assert await self._held(store) == held
                taken.append(await translator.convert("h1", "o-1", ["B", "A"]))
                assert taken[0] == frozenset()
                assert await _stored_status(store, "h1") == "refused"
                assert await translator.get("h1") is None
                assert await _sealed(store, "h1") == set()
                assert await self._held(store) == held  # the conversion changed nothing

            assert (await HoldContract._create(api, "other", ("A", 9))).outcome == "created"
            _hook(api, after=after)
            refused = await HoldContract._create(api, "h1", ("B", 2), ("X3", 1), ("A", 2))
            assert refused.outcome == "short" and refused.available == [3, 4, 1]
            assert seen == [
                "SHARDED_HOLD_BEGIN", "SHARDED_HOLD_GRANT", "SHARDED_HOLD_GRANT",
                "SHARDED_HOLD_FINISH", "SHARDED_HOLD_DROP", "SHARDED_HOLD_DROP",
            ], seen  # the first group's lines, then the short group's (none)
            assert await self._held(store) == self._none(A=(9, {"other": 9}))
            await _reserve(store, [("B", 2), ("A", 1)], self.STOCK, taken[0])
            assert await _reader(store, ["B", "X3", "A"]) == {"B": 1, "X3": 4, "A": 0}
            assert await translator.convert("h1", "o-1", ["B", "A"]) == frozenset()
            assert await self._held(store) == self._none(A=(9, {"other": 9}))

        self.check(scenario)

    @pytest.mark.parametrize("landing", ["before the short grant", "after the short grant"])
    def test_a_short_group_after_the_conversion_leaves_the_lines_to_it(
        self, landing: str
    ) -> None:
        """All or nothing, A short in the second group, and the conversion marks the
        record converted first (before or after the creator's short Grant, before its
        seals reach A's shard): the creator's refusal finds the record converted, so it
        drops nothing and answers the hold as converted with what it had granted; the
        conversion then seals, drops X3 (the order lacks it) and B's line is the
        reservation's to take over. No line counts after the reservation, none twice."""

        async def scenario(store: RedisStore, api: HoldStore, translator: HoldStore) -> None:
            seen: list[str] = []
            marked, go = asyncio.Event(), asyncio.Event()
            conversion: list[asyncio.Task[frozenset[str]]] = []

            async def pause_before_sealing(name: str, args: Any, reply: Any) -> None:
                if name == "SHARDED_HOLD_SEAL" and not go.is_set():
                    marked.set()
                    await go.wait()

            _hook(translator, before=pause_before_sealing)

            async def after(name: str, args: Any, reply: Any) -> None:
                seen.append(name)
                grants = seen.count("SHARDED_HOLD_GRANT")
                if name != "SHARDED_HOLD_GRANT" or grants != (
                    1 if landing == "before the short grant" else 2
                ):
                    return
                conversion.append(asyncio.create_task(
                    translator.convert("h1", "o-1", ["B", "A"])
                ))
                await marked.wait()
                assert await _stored_status(store, "h1") == "converted"
                assert await _sealed(store, "h1") == set()

            assert (await HoldContract._create(api, "other", ("A", 9))).outcome == "created"
            _hook(api, after=after)
            created = await HoldContract._create(api, "h1", ("B", 2), ("X3", 1), ("A", 2))
            assert seen == [
                "SHARDED_HOLD_BEGIN", "SHARDED_HOLD_GRANT", "SHARDED_HOLD_GRANT",
                "SHARDED_HOLD_FINISH",
            ], seen  # no drop: the lines are the conversion's
            assert created.outcome == "exists" and created.record is not None
            assert created.record.status == "converted"
            assert [(x.sku, x.requested, x.held) for x in created.record.lines] == [
                ("B", 2, 2), ("X3", 1, 1), ("A", 2, 0)
            ]
            assert await self._held(store) == self._none(
                B=(2, {"h1": 2}), X3=(1, {"h1": 1}), A=(9, {"other": 9})
            )
            go.set()
            taken = await conversion[0]
            assert taken == {"B", "A"}
            assert await _sealed(store, "h1") == {1, 11}
            assert await self._held(store) == self._none(B=(2, {"h1": 2}), A=(9, {"other": 9}))
            skus = ["B", "X3", "A"]
            assert await _reader(store, skus) == {"B": 1, "X3": 4, "A": 1}
            await _reserve(store, [("B", 2), ("A", 1)], self.STOCK, taken)
            assert await _reader(store, skus) == {"B": 1, "X3": 4, "A": 0}
            assert await self._held(store) == self._none(A=(9, {"other": 9}))
            found = await api.get("h1")
            assert found is not None and found.lines == created.record.lines
            assert await translator.convert("h1", "o-1", ["B", "A"]) == {"B", "A"}
            assert await self._held(store) == self._none(A=(9, {"other": 9}))

        self.check(scenario)

    def test_a_pending_hold_converted_while_its_dead_creator_has_the_lease_then_retried(
        self,
    ) -> None:
        """The creator granted B and X3, then MUG-BLUE, and died with its lease still
        running: a retry of the same request is told to retry (503); the order converts
        the pending hold (B and A): X3 and MUG-BLUE released, B left to the reservation,
        every shard sealed; the retry then finds the hold converted and grants nothing,
        nor does the creator if it was only slow."""

        async def scenario(store: RedisStore, api: HoldStore, translator: HoldStore) -> None:
            sharded = api._sharded
            assert sharded is not None
            keys = store.keys
            lines = (("B", 2), ("X3", 1), ("MUG-BLUE", 1), ("A", 3))
            begun = await sharded._call(
                "SHARDED_HOLD_BEGIN", [keys.hold("h1")],
                [fingerprint("store", lines), "store", 60_000, 0, 86_400_000,
                 msgspec.msgpack.encode([StoredLine(s, q, 0) for s, q in lines]), 60_000],
            )
            assert begun[0] == b"begun"
            exp = int(begun[2])

            async def grant(shard: int, *group: tuple[str, int]) -> Any:
                grant_keys = [keys.changes(shard)]
                args: list[Any] = ["h1", "store", exp, 0, 1000, len(group)]
                for sku, qty in group:
                    grant_keys += [keys.sku(sku), keys.held(sku)]
                    args += [sku, qty]
                return await sharded._call(
                    "SHARDED_HOLD_GRANT", [*grant_keys, keys.hold_sealed(shard, "h1")], args
                )

            assert (await grant(1, ("B", 2), ("X3", 1)))[0] == b"granted"
            assert (await grant(8, ("MUG-BLUE", 1)))[0] == b"granted"
            held = self._none(B=(2, {"h1": 2}), X3=(1, {"h1": 1}), MUG_BLUE=(1, {"h1": 1}))
            assert await self._held(store) == held
            with pytest.raises(StoreUnavailable, match="another request"):
                await HoldContract._create(api, "h1", *lines)
            with pytest.raises(StoreUnavailable, match="being decided"):
                await api.get("h1")
            assert await self._held(store) == held

            taken = await translator.convert("h1", "o-1", ["B", "A"])
            assert taken == {"B", "A"}
            assert await _stored_status(store, "h1") == "converted"
            assert await _sealed(store, "h1") == {1, 8, 11}
            assert await self._held(store) == self._none(B=(2, {"h1": 2}))

            retried = await HoldContract._create(api, "h1", *lines)
            assert retried.outcome == "exists" and retried.record is not None
            assert retried.record.status == "converted"
            # Its creator never finished: the record has no granted lines to show.
            assert [(x.sku, x.held) for x in retried.record.lines] == [
                ("B", 0), ("X3", 0), ("MUG-BLUE", 0), ("A", 0)
            ]
            assert await self._held(store) == self._none(B=(2, {"h1": 2}))
            # The creator was only slow: its next grant grants nothing.
            assert (await grant(11, ("A", 3)))[0] == b"ended"
            assert await self._held(store) == self._none(B=(2, {"h1": 2}))

            skus = ["B", "X3", "MUG-BLUE", "A"]
            assert await _reader(store, skus) == {"B": 1, "X3": 4, "MUG-BLUE": 5, "A": 10}
            await _reserve(store, [("B", 2), ("A", 3)], self.STOCK, taken)
            assert await _reader(store, skus) == {"B": 1, "X3": 4, "MUG-BLUE": 5, "A": 7}
            assert await self._held(store) == self._none()
            assert await translator.convert("h1", "o-1", ["B", "A"]) == {"B", "A"}
            assert await self._held(store) == self._none()

        self.check(scenario)
