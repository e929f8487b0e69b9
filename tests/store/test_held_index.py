"""The per-channel sums and the expiry index of held hashes, and the deltas followers apply.

Against a real ``redis-server``: after any sequence of grants, extensions,
releases, conversions (in the applier's batch write) and expiries, each held
hash's ``t:{channel}`` sums equal the sum over its lines, its expiry index holds
exactly its hold ids scored by expiry, and a follower fed the change stream's
deltas (with or without a missed one) holds what a load from scratch holds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stocksync.api.model import AvailabilityModel, now_ms
from stocksync.codecs.holds import HeldDelta, HeldSnapshot, decode_held, snapshot_decoder
from stocksync.codecs.state import Position
from stocksync.readmodel.core import ChannelSpec, Topology
from stocksync.store import RedisStore, Write
from stocksync.store.holds import HoldStore
from stocksync.store.layout import Change, HeldChange, Keys, decode_change
from tests.api.helpers import GENERATION, NAMESPACE, projection, write

SKUS = ("A", "B")
CHANNELS = ("web", "store")
HOLD_IDS = [f"cart-{i}" for i in range(6)]

_ttl = st.sampled_from([1, 20, 600_000])  # ms: expired by the next step, soon, long
_skus = st.lists(st.sampled_from(SKUS), min_size=1, max_size=2, unique=True)
_op = st.one_of(
    st.tuples(
        st.just("create"), st.sampled_from(HOLD_IDS), st.sampled_from(CHANNELS), _skus,
        st.integers(1, 4), _ttl,
    ),
    st.tuples(st.just("extend"), st.sampled_from(HOLD_IDS), _ttl),
    st.tuples(st.just("release"), st.sampled_from(HOLD_IDS)),
    st.tuples(st.just("convert"), st.sampled_from(HOLD_IDS), _skus),
    st.tuples(st.just("wait"), st.integers(1, 25)),
)


def check_index(client: redis.Redis, keys: Keys, sku: str) -> None:
    """The held hash's sums and expiry index are exact at its hold version."""
    fields = client.hgetall(keys.held(sku))
    if not fields:
        return
    lines = {
        f[2:].decode(): msgspec.msgpack.decode(v) for f, v in fields.items() if f[:2] == b"h:"
    }
    sums: dict[str, int] = {}
    for channel, qty, _ in lines.values():
        sums[channel] = sums.get(channel, 0) + qty
    totals = {f[2:].decode(): int(v) for f, v in fields.items() if f[:2] == b"t:"}
    assert {c: q for c, q in totals.items() if q} == sums
    assert all(q >= 0 for q in totals.values())
    index = client.zrange(keys.held_expiry(sku), 0, -1, withscores=True)
    assert {m.decode(): int(s) for m, s in index} == {h: exp for h, (_, _, exp) in lines.items()}
    assert fields[b"x"] == fields[b"v"]


async def _run(redis_url: str, sync: redis.Redis, ops: list[Any]) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keys(NAMESPACE)
    holds = HoldStore(client, lambda: keys)
    topology = Topology(channels=tuple(ChannelSpec(name=c, nodes=("dc-east",)) for c in CHANNELS))
    store = RedisStore(client, keys, topology=topology, generation=GENERATION)
    versions = dict.fromkeys(SKUS, 1)
    try:
        for step, op in enumerate(ops):
            if op[0] == "create":
                _, hold_id, channel, skus, qty, ttl = op
                pairs = [(sku, qty) for sku in skus]
                await holds.create(
                    hold_id, channel, pairs, fingerprint=f"{channel}{pairs}", ttl_ms=ttl,
                    partial=True,
                )
            elif op[0] == "extend":
                await holds.extend(op[1], op[2])
            elif op[0] == "release":
                await holds.release(op[1])
            elif op[0] == "convert":
                _, hold_id, skus = op
                taken = await holds.convert(hold_id, f"order-{step}", skus)
                for sku in sorted(taken):
                    position = Position(sku=sku, version=versions[sku] + 1)
                    write_ = Write(position, versions[sku], (hold_id,))
                    assert await store.write_batch([write_]) == []
                    versions[sku] += 1
            else:
                await asyncio.sleep(op[1] / 1000)
            for sku in SKUS:
                check_index(sync, keys, sku)
    finally:
        await holds.close()
        await client.aclose()


def _held_changes(sync: redis.Redis, keys: Keys) -> list[tuple[str, HeldDelta | HeldSnapshot]]:
    out = []
    for _, fields in sync.xrange(keys.changes()):
        change = decode_change(fields)
        raw = change.held if isinstance(change, (HeldChange, Change)) else None
        if raw is not None:
            assert isinstance(change, (HeldChange, Change))
            out.append((change.sku, decode_held(raw)))
    return out


def _state(model: AvailabilityModel, now: int) -> dict[str, Any]:
    out = {}
    for sku, held in model.held.items():
        held.advance(now)
        out[sku] = (held.version, held.lines, held.held, held.expired, held.next_expiry())
    return out


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(_op, min_size=1, max_size=25), missed=st.integers(0, 1000))
def test_sums_and_index_stay_exact_and_deltas_rebuild_the_lines(
    redis_url: str, sync_client: redis.Redis, ops: list[Any], missed: int
) -> None:
    sync_client.flushdb()
    write(sync_client, *(projection(sku, 1, available=8, channels=CHANNELS) for sku in SKUS))
    asyncio.run(_run(redis_url, sync_client, ops))
    keys = Keys(NAMESPACE)
    changes = _held_changes(sync_client, keys)
    assert all(isinstance(c, HeldDelta) for _, c in changes)
    skip = missed % len(changes) if changes else -1

    def stored(sku: str) -> HeldSnapshot:
        client = redis.Redis.from_url(redis_url)
        from stocksync.store import scripts

        try:
            return snapshot_decoder.decode(client.eval(scripts.READ_HELD, 1, keys.held(sku)))
        finally:
            client.close()

    fed, gapped, loaded = (AvailabilityModel(CHANNELS) for _ in range(3))
    gaps = 0
    for i, (sku, change) in enumerate(changes):
        assert isinstance(change, HeldDelta)
        assert fed.apply_delta(sku, change) is True  # in order, each follows the last
        if i == skip:
            continue  # a missed entry: the next change of that SKU finds a gap
        if gapped.apply_delta(sku, change) is None:
            gaps += 1
            gapped.apply_held(sku, stored(sku), replace=True)
    for sku in SKUS:
        loaded.apply_held(sku, stored(sku))
    now = now_ms()
    expected = {s: v for s, v in _state(loaded, now).items() if v[0] or v[1]}
    assert {s: v for s, v in _state(fed, now).items() if v[0] or v[1]} == expected
    # A missed change shows at the SKU's next change (none: a reload's business).
    unseen = set()
    if skip >= 0:
        later = [s for s, _ in changes[skip + 1 :]]
        assert gaps == (1 if changes[skip][0] in later else 0)
        if changes[skip][0] not in later:
            unseen.add(changes[skip][0])
    assert {
        s: v for s, v in _state(gapped, now).items() if (v[0] or v[1]) and s not in unseen
    } == {s: v for s, v in expected.items() if s not in unseen}


def test_a_hash_without_sums_or_index_is_migrated_when_first_opened(
    redis_url: str, sync_client: redis.Redis
) -> None:
    """Held hashes as the code before the sums wrote them (also by such a process during a
    rolling upgrade: it moves v, not x) are read right: built once from their lines."""
    keys = Keys(NAMESPACE)
    write(sync_client, projection("A", 1, available=10, channels=CHANNELS))
    now = int(time.time() * 1000)
    old = {
        "v": 7,
        "h:old-1": msgspec.msgpack.encode(["web", 3, now + 600_000]),
        "h:old-2": msgspec.msgpack.encode(["web", 2, now - 1]),  # expired, not pruned
        "h:old-3": msgspec.msgpack.encode(["store", 4, now + 600_000]),
    }
    sync_client.hset(keys.held("A"), mapping=old)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        holds = HoldStore(client, lambda: keys)
        try:
            # 10 on web less old-1's 3 (old-2 has expired): 7 left, so 8 is short.
            short = await holds.create(
                "new-1", "web", [("A", 8)], fingerprint="f1", ttl_ms=600_000, partial=False
            )
            assert short.outcome == "short" and short.available == [7]
            check_index(sync_client, keys, "A")
            assert sync_client.hget(keys.held("A"), "v") == b"8"  # the prune of old-2
            created = await holds.create(
                "new-2", "web", [("A", 5)], fingerprint="f2", ttl_ms=600_000, partial=False
            )
            assert created.outcome == "created"
            check_index(sync_client, keys, "A")
            # A process of the older code adds a line (v moves, x does not): rebuilt again.
            sync_client.hset(
                keys.held("A"),
                mapping={"v": 10, "h:old-4": msgspec.msgpack.encode(["web", 1, now + 600_000])},
            )
            short = await holds.create(
                "new-3", "web", [("A", 2)], fingerprint="f3", ttl_ms=600_000, partial=False
            )
            assert short.outcome == "short" and short.available == [1]  # 10 - 3 - 5 - 1
            check_index(sync_client, keys, "A")
        finally:
            await holds.close()
            await client.aclose()

    asyncio.run(scenario())


def test_the_scripts_find_the_expiry_index_where_the_layout_puts_it(
    sync_client: redis.Redis,
) -> None:
    """The index key the Lua derives from a held key is Keys.held_expiry, on one Redis
    and in every cluster shard (so it shares the held hash's slot)."""
    from redis.crc import key_slot

    from stocksync.store import scripts
    from stocksync.store.layout import CLUSTER_SHARDS

    probe = scripts._HOLD_PRELUDE + "\nreturn index_of(KEYS[1])"
    for keys in (Keys("ns"), Keys("ns:a", "base:x", shards=CLUSTER_SHARDS)):
        for sku in ("A", "SKU-0000001", "with:colons"):
            got = sync_client.eval(probe, 1, keys.held(sku)).decode()
            assert got == keys.held_expiry(sku)
            assert key_slot(got.encode()) == key_slot(keys.held(sku).encode())


def test_a_follower_of_the_older_code_rejects_a_delta_and_the_new_one_reads_both() -> None:
    """The change entry's two shapes are disjoint: a snapshot decoder (the code before
    deltas) fails on a delta rather than misreading it, and decode_held tells them apart."""
    from stocksync.codecs.holds import HeldLine

    line = HeldLine("cart-1", "web", 2, 1_800_000_000_000)
    delta = msgspec.msgpack.encode(HeldDelta(4, 6, [line], ["cart-0"]))
    with pytest.raises(msgspec.ValidationError):
        snapshot_decoder.decode(delta)
    assert decode_held(delta) == HeldDelta(4, 6, [line], ["cart-0"])
    snapshot = msgspec.msgpack.encode(HeldSnapshot(6, [line]))
    assert decode_held(snapshot) == HeldSnapshot(6, [line])
    # As Lua's cmsgpack writes an empty list of lines or ids.
    assert decode_held(msgspec.msgpack.encode([3, 4, [], ["cart-0"]])) == HeldDelta(
        3, 4, [], ["cart-0"]
    )


def test_a_follower_that_missed_a_change_reads_the_skus_lines_again(
    redis_url: str, sync_client: redis.Redis
) -> None:
    from stocksync.api.model import ModelSync

    keys = Keys(NAMESPACE)
    write(sync_client, projection("A", 1, available=10, channels=CHANNELS))

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        holds = HoldStore(client, lambda: keys)
        store = RedisStore(client, keys, generation=GENERATION)
        model = AvailabilityModel(CHANNELS)
        sync = ModelSync(model, store)
        sync.holds = holds
        try:
            for i in range(3):
                await holds.create(
                    f"cart-{i}", "web", [("A", 1)], fingerprint=f"f{i}", ttl_ms=600_000,
                    partial=False,
                )
            changes = _held_changes(sync_client, keys)
            assert [c.after for _, c in changes if isinstance(c, HeldDelta)] == [1, 2, 3]
            await sync._apply_held("A", msgspec.msgpack.encode(changes[0][1]))
            assert model.held["A"].version == 1 and sync.held_gaps == 0
            # The second change is missed: the third finds a gap and reads A's lines.
            await sync._apply_held("A", msgspec.msgpack.encode(changes[2][1]))
            assert sync.held_gaps == 1 and sync.status().held_rereads == 1
            assert model.held["A"].version == 3
            assert set(model.held["A"].lines) == {"cart-0", "cart-1", "cart-2"}
            assert model.held["A"].held == {"web": 3}
            # The missed one arriving late changes nothing.
            await sync._apply_held("A", msgspec.msgpack.encode(changes[1][1]))
            assert model.held["A"].version == 3 and sync.held_gaps == 1
        finally:
            await holds.close()
            await client.aclose()

    asyncio.run(scenario())
