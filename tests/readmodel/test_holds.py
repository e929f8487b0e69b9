"""The hold arithmetic, pure and in Redis's scripts, held to the holds oracle."""

from __future__ import annotations

import asyncio
import gc

import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stocksync.codecs.holds import HeldDelta, HeldLine, HeldSnapshot, StoredLine, decode_held
from stocksync.codecs.state import Position
from stocksync.readmodel import holds
from stocksync.readmodel.core import ChannelSpec, Topology
from stocksync.store import RedisStore, StoreError, StoreUnavailable, Write
from stocksync.store.holds import HoldStore
from stocksync.store.layout import Keys
from tests.api.helpers import GENERATION, NAMESPACE, projection, write
from tests.readmodel.oracle import HoldsOracle

SKUS = ("A", "B", "C")
NOW = 1_800_000_000_000


# --- pure functions against the oracle ------------------------------------------------

line_strategy = st.builds(
    HeldLine,
    hold_id=st.sampled_from(["h1", "h2", "h3", "h4"]),
    channel=st.sampled_from(["web", "store"]),
    qty=st.integers(1, 5),
    expires_ms=st.integers(NOW - 3, NOW + 3),
)


@given(st.lists(line_strategy, max_size=8), st.integers(NOW - 4, NOW + 4))
def test_held_and_version_follow_the_active_lines(lines: list[HeldLine], now: int) -> None:
    oracle = HoldsOracle(pre={})
    for i, line in enumerate(lines):
        oracle.holds[f"x{i}"] = oracle_hold(line)
    held = holds.held_by_channel(lines, now)
    for channel in ("web", "store"):
        assert held.get(channel, 0) == oracle.held("S", channel, now)
    expired = sum(1 for line in lines if line.expires_ms <= now)
    assert holds.served_version(10, 3, lines, now) == 13 + expired
    upcoming = [line.expires_ms for line in lines if line.expires_ms > now]
    assert holds.next_expiry(lines, now) == (min(upcoming) if upcoming else None)


def oracle_hold(line: HeldLine) -> object:
    from tests.readmodel.oracle import _OracleHold

    return _OracleHold(line.channel, {"S": line.qty}, {"S": line.qty}, line.expires_ms)


@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6)), min_size=1, max_size=4),
    st.booleans(),
)
def test_grants_follow_the_oracle(lines: list[tuple[int, int]], partial: bool) -> None:
    oracle = HoldsOracle(pre={(f"S{i}", "web"): pre for i, (pre, _) in enumerate(lines)})
    wanted = {f"S{i}": qty for i, (_, qty) in enumerate(lines)}
    outcome, expected = oracle.request("h", "web", wanted, partial=partial, now_ms=NOW, ttl_ms=1)
    granted = holds.grant_all([pre for pre, _ in lines], [q for _, q in lines], partial=partial)
    if outcome == "short":
        assert granted is None
    else:
        assert granted == [expected[f"S{i}"] for i in range(len(lines))]
        stored = [StoredLine(s, q, g) for (s, q), g in zip(wanted.items(), granted, strict=True)]
        assert holds.hold_status(stored) == (
            "held" if all(g == q for g, q in zip(granted, wanted.values(), strict=True))
            else "partial"
        )


def test_a_replicas_held_lines_leave_the_collector_only_their_heap() -> None:
    # A replica keeps the lines of every SKU ever held: a full collection walks every
    # tracked container, so those must not be tracked (the heap's list always is).
    lines = holds.HeldLines.of(
        HeldSnapshot(3, [HeldLine("h1", "web", 2, NOW + 5), HeldLine("h2", "web", 1, NOW - 1)]),
        NOW,
    )
    lines.apply(HeldDelta(3, 4, [HeldLine("h3", "store", 1, NOW + 9)], []), NOW)
    lines.apply(HeldDelta(4, 5, [], ["h1"]), NOW + 6)
    assert lines.expired and lines.lines and lines.held
    assert not gc.is_tracked(lines)
    for part in (lines.lines, lines.held, lines.expired):
        assert not gc.is_tracked(part)
    gc.collect()  # the heap's tuples are untracked by the first collection they survive
    assert not any(gc.is_tracked(entry) for entry in lines.heap)


def test_available_after_holds_never_goes_negative() -> None:
    assert holds.available_after_holds(5, 2) == 3
    assert holds.available_after_holds(2, 5) == 0
    assert holds.grant(3, 5, partial=True) == 3
    assert holds.grant(3, 5, partial=False) == 0
    assert holds.fingerprint("web", [("B", 1), ("A", 2)]) == holds.fingerprint(
        "web", [("A", 2), ("B", 1)]
    )


# --- the Redis scripts against the oracle ---------------------------------------------


operation = st.one_of(
    st.tuples(
        st.just("hold"),
        st.sampled_from(["h1", "h2", "h3", "h4", "h5", "h6"]),
        st.dictionaries(st.sampled_from(SKUS), st.integers(1, 4), min_size=1, max_size=3),
        st.booleans(),
    ),
    st.tuples(st.just("release"), st.sampled_from(["h1", "h2", "h3", "h4", "h5", "h6"])),
)


async def _held_in_redis(client: aioredis.Redis, sku: str) -> int:
    raw = await client.hgetall(Keys(NAMESPACE).held(sku))
    total = 0
    for field, value in raw.items():
        if field.startswith(b"h:"):
            channel, qty, _ = msgspec.msgpack.decode(value)
            total += qty if channel == "web" else 0
    return total


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    pre=st.tuples(*(st.integers(0, 6) for _ in SKUS)),
    ops=st.lists(operation, min_size=1, max_size=12),
)
def test_scripts_grant_what_the_oracle_grants(
    redis_url: str, sync_client: redis.Redis, pre: tuple[int, ...], ops: list[tuple]
) -> None:
    sync_client.flushdb()
    write(sync_client, *(projection(s, 1, available=a, channels=("web",)) for s, a in zip(
        SKUS, pre, strict=True
    )))
    oracle = HoldsOracle(pre={(s, "web"): a for s, a in zip(SKUS, pre, strict=True)})

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        keys = Keys(NAMESPACE)
        store = HoldStore(client, lambda: keys)
        try:
            for op in ops:
                if op[0] == "hold":
                    _, hold_id, lines, partial = op
                    pairs = list(lines.items())
                    expected, held = oracle.request(
                        hold_id, "web", lines, partial=partial, now_ms=0, ttl_ms=10**12
                    )
                    created = await store.create(
                        hold_id,
                        "web",
                        pairs,
                        fingerprint=holds.fingerprint("web", pairs),
                        ttl_ms=600_000,
                        partial=partial,
                    )
                    assert created.outcome == expected
                    if expected == "short":
                        assert created.available == [held[s] for s, _ in pairs]
                    elif expected != "conflict":
                        assert created.record is not None
                        assert {x.sku: x.held for x in created.record.lines} == held
                else:
                    _, hold_id = op
                    was_active = oracle.end(hold_id, "released", 0)
                    found = await store.release(hold_id)
                    if hold_id not in oracle.holds:
                        assert found is None
                    else:
                        assert found is not None
                        assert found[1] == was_active
                        assert found[0].status == "released"
                for sku in SKUS:
                    assert await _held_in_redis(client, sku) == oracle.held(sku, "web", 0)
        finally:
            await store.close()
            await client.aclose()

    asyncio.run(scenario())


def test_conversion_deletes_the_line_in_the_applier_write(
    redis_url: str, sync_client: redis.Redis
) -> None:
    write(sync_client, projection("A", 1, available=5, channels=("web",)))

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        keys = Keys(NAMESPACE)
        holds_store = HoldStore(client, lambda: keys)
        topology = Topology(channels=(ChannelSpec(name="web", nodes=("dc-east", "dc-west")),))
        store = RedisStore(client, keys, topology=topology, generation=GENERATION)
        try:
            created = await holds_store.create(
                "cart-1", "web", [("A", 2)], fingerprint="f", ttl_ms=60_000, partial=False
            )
            assert created.outcome == "created"
            assert await holds_store.convert("cart-1", "o-1", ["A"]) == frozenset({"A"})
            # Again for the same order (a redelivery): the same answer; another order: none.
            assert await holds_store.convert("cart-1", "o-1", ["A"]) == frozenset({"A"})
            assert await holds_store.convert("cart-1", "o-2", ["A"]) == frozenset()
            last = (await client.xrevrange(keys.changes(), count=1))[0][0]
            pos = Position(sku="A", version=2)
            assert await store.write_batch([Write(pos, 1, ("cart-1",))]) == []
            entries = await client.xrange(keys.changes(), min=f"({last.decode()}")
            [(_, fields)] = entries
            assert fields[b"v"] == b"2"
            change = decode_held(fields[b"held"])
            assert isinstance(change, HeldDelta)
            assert (change.upserts, change.removed) == ([], ["cart-1"])
            assert change.after == change.before + 1
            assert await _held_in_redis(client, "A") == 0
            record = await holds_store.get("cart-1")
            assert record is not None and record.status == "converted"
        finally:
            await holds_store.close()
            await client.aclose()

    asyncio.run(scenario())


def test_a_script_that_fails_is_no_outage(redis_url: str, sync_client: redis.Redis) -> None:
    """Data a script cannot read is a StoreError, which callers do not retry forever."""
    write(sync_client, projection("A", 1, available=5, channels=("web",)))
    sync_client.hset(Keys(NAMESPACE).held("A"), "h:broken", b"\xc1 not msgpack")

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        keys = Keys(NAMESPACE)
        store = HoldStore(client, lambda: keys)
        try:
            with pytest.raises(StoreError) as caught:
                await store.create(
                    "h", "web", [("A", 1)], fingerprint="f", ttl_ms=1000, partial=False
                )
            assert not isinstance(caught.value, StoreUnavailable)
            # The connection stays usable.
            assert await store.get("nothing") is None
        finally:
            await store.close()
            await client.aclose()

    asyncio.run(scenario())
