"""``rebuild`` over topics filled here: the new generation equals the pure core's model."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis
from aiokafka import AIOKafkaConsumer

from stocksync.agents.topics import topic_names
from stocksync.codecs.messages import decode_message
from stocksync.codecs.projections import projection_decoder, projection_encoder
from stocksync.codecs.state import OrderState, Position, position_decoder
from stocksync.config.settings import NodeSettings, Settings, WorkerSettings
from stocksync.daemon import operate
from stocksync.daemon.operate_rebuild import active_workers
from stocksync.readmodel import core
from stocksync.readmodel.generation import GENERATION_PATTERN
from stocksync.readmodel.keys import Keys
from tests.operate.helpers import produce, run

NOW_MS = 1_795_770_000_000
WINDOW_MS = 86_400_000


def ev(type_: str, event_id: str, at: str = "09:00", **fields: object) -> dict[str, object]:
    """An event of the contract on 2026-11-27 at ``at`` UTC."""
    return {
        "type": type_, "schema": 1, "event_id": event_id,
        "occurred_at": f"2026-11-27T{at}:00Z", "source": "test", **fields,
    }


def snap(eid: str, sku: str, node: str, on_hand: int, as_of: str = "09:00") -> dict[str, object]:
    """A stock.snapshot."""
    return ev("stock.snapshot", eid, as_of, sku=sku, node=node, on_hand=on_hand,
              as_of=f"2026-11-27T{as_of}:00Z")


def adj(eid: str, sku: str, node: str, delta: int, at: str) -> dict[str, object]:
    """A stock.adjusted."""
    return ev("stock.adjusted", eid, at, sku=sku, node=node, delta=delta, reason="correction")


def messages() -> list[tuple[str, str, bytes]]:
    """``(kind, key, value)`` source messages: valid, invalid, bulk, duplicated, out of date."""
    stock: list[tuple[str, object]] = [
        ("A", snap("s1", "A", "dc-east", 100)),
        ("A", snap("s2", "A", "dc-west", 40)),
        ("A", adj("s3", "A", "dc-east", -3, "09:10")),
        ("erp-export", [
            snap("s4", "B", "dc-east", 20), snap("s5", "C", "dc-west", 5),
            snap("s6", "C", "dc-east", -1),  # invalid alone; the rest of the bulk applies
            ev("stock.policy", "s7", "09:05", sku="A", node="dc-east", safety_stock=4),
        ]),
        ("A", adj("s3", "A", "dc-east", -3, "09:10")),  # a producer's second copy
        ("A", snap("s8", "A", "dc-east", 90, "08:00")),  # older than the count held
        ("A", b"{not json"),
        ("B", adj("s9", "B", "dc-east", 5, "09:20")),
    ]
    stock += [
        (f"S{i % 7}", adj(f"v{i}", f"S{i % 7}", ("dc-east", "dc-west")[i % 2], i % 5 + 1,
                          f"10:{i % 60:02d}"))
        for i in range(60)
    ]
    orders: list[tuple[str, object]] = [
        ("o1", ev("order.created", "o1c", channel="web", lines=[
            {"line_id": "1", "sku": "A", "qty": 2}, {"line_id": "2", "sku": "B", "qty": 1,
                                                      "node": "dc-east"}])),
        ("o1", ev("order.allocated", "o1a", lines=[{"line_id": "1", "node": "dc-east"}])),
        ("o1", ev("order.shipped", "o1s", "11:00", shipment_id="9", node="dc-east",
                  lines=[{"line_id": "1", "qty": 2}])),
        ("o2", ev("order.created", "o2c", channel="web", lines=[{"line_id": "1", "sku": "C",
                                                               "qty": 1}])),
        ("o2", ev("order.cancelled", "o2x")),
        ("o3", ev("order.allocated", "o3a", lines=[{"line_id": "1", "node": "dc-east"}])),
        ("o4", ev("order.created", "o4c", channel="web", lines=[
            {"line_id": "1", "sku": "A", "qty": 5, "node": "dc-west"}])),
    ]
    returns: list[tuple[str, object]] = [
        ("r1", ev("return.authorized", "r1a", lines=[{"line_id": "1", "sku": "A", "qty": 1}])),
        ("r1", ev("return.received", "r1r", node="dc-east", lines=[{"line_id": "1", "qty": 1}])),
        ("r1", ev("return.inspected", "r1i", "12:00", node="dc-east",
                  lines=[{"line_id": "1", "qty": 1, "disposition": "restock"}])),
        ("r2", ev("return.received", "r2r", node="dc-west",
                  lines=[{"line_id": "1", "qty": 2, "sku": "B"}])),
        ("r9", ev("return.inspected", "r9i", node="dc-west",
                  lines=[{"line_id": "1", "qty": 1, "disposition": "damaged"}])),
    ]
    out: list[tuple[str, str, bytes]] = []
    ids = {"orders": "order_id", "returns": "rma_id"}
    for kind, items in (("stock", stock), ("orders", orders), ("returns", returns)):
        for key, value in items:
            if isinstance(value, dict) and kind in ids:
                value = {**value, ids[kind]: key}
            raw = value if isinstance(value, bytes) else msgspec.json.encode(value)
            out.append((kind, key, raw))
    return out


#: Invalid events among them: a bulk element, malformed JSON, an unknown order and RMA.
INVALID = 4


def core_model(sent: list[tuple[str, str, bytes]], topology: core.Topology) -> dict[str, Position]:
    """The positions the pure core computes from the messages, in the order they were sent."""
    states: dict[tuple[str, str], OrderState | object] = {}
    positions: dict[str, Position] = {}
    offsets: dict[str, int] = defaultdict(int)
    for kind, key, value in sent:
        decoded = decode_message(value)
        offset = offsets[kind]
        offsets[kind] += 1
        for index, event, _raw in decoded.events:
            if core.check_placement(event, kind, key, decoded.bulk) is not None:
                continue
            ref = core.SourceRef(kind=kind, partition=0, offset=offset, index=index or 0)
            entity = core.key_of(event)
            state = states.get((kind, entity)) if entity is not None else None
            outcome, new_state = core.translate(event, state, ref, NOW_MS, WINDOW_MS)  # type: ignore[arg-type]
            if entity is not None and new_state is not None:
                states[(kind, entity)] = new_state
            if isinstance(outcome, core.Translated):
                for effect in outcome.effects:
                    pos = positions.setdefault(effect.sku, Position(sku=effect.sku))
                    core.apply_effects(pos, [effect], NOW_MS, WINDOW_MS)
    return positions


def figures(projection: bytes | Position, topology: core.Topology) -> object:
    """What the API serves of a SKU, without version and time."""
    if isinstance(projection, Position):
        projection = projection_encoder.encode(core.project(projection, topology))
    decoded = projection_decoder.decode(projection)
    return [
        (c.channel, c.available, c.status, [msgspec.structs.asdict(n) for n in c.nodes or []])
        for c in decoded.channels
    ]


@pytest.fixture
def rebuilt_settings(settings: Settings, topic_prefix: str) -> Settings:
    """This test's settings with its own consumer group and a node default."""
    return msgspec.structs.replace(
        settings,
        nodes={"dc-east": NodeSettings(safety_stock=2)},
        worker=WorkerSettings(group_id=f"g-{topic_prefix}"),
    )


@pytest.fixture
def filled(rebuilt_settings: Settings) -> Iterator[tuple[Settings, list[tuple[str, str, bytes]]]]:
    """The source topics filled with :func:`messages`."""
    names = topic_names(rebuilt_settings)
    topic = {"stock": names.stock, "orders": names.orders, "returns": names.returns}
    sent = messages()
    produce(rebuilt_settings, [(topic[kind], key.encode(), value, []) for kind, key, value in sent])
    yield rebuilt_settings, sent


def args(**fields: object) -> argparse.Namespace:
    """The arguments the CLI would pass."""
    base: dict[str, object] = {"yes": True}
    base.update(fields)
    return argparse.Namespace(**base)


def stored(client: redis.Redis, namespace: str) -> dict[str, dict[bytes, bytes]]:
    """Every SKU hash under ``namespace``."""
    keys = Keys(namespace)
    return {
        keys.sku_of(key): client.hgetall(key)  # type: ignore[misc]
        for key in client.scan_iter(match=keys.sku_pattern(), count=1000)
    }


def get(client: redis.Redis, key: str) -> bytes | None:
    """A string key's value."""
    value = client.get(key)
    assert value is None or isinstance(value, bytes)
    return value


def last_entry(client: redis.Redis, stream: str) -> dict[bytes, bytes]:
    """The fields of a stream's newest entry."""
    entries: Any = client.xrevrange(stream, count=1)
    fields: dict[bytes, bytes] = entries[0][1]
    return fields


def test_rebuild_equals_the_core_and_switches_the_pointer(
    filled: tuple[Settings, list[tuple[str, str, bytes]]],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings, sent = filled
    topology = core.topology_of(settings)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        client.hset("ops:sku:{OLD}", mapping={"v": 1, "pos": b"", "proj": b"{}"})
        caplog.set_level(logging.INFO, logger="stocksync.audit")

        assert operate.rebuild(settings, args()) == 0

        captured = capsys.readouterr()
        pointer = get(client, "ops:generation")
        assert pointer is not None and GENERATION_PATTERN.match(pointer.decode())
        generation = pointer.decode()
        namespace = f"ops:{generation}"
        assert run(_resolve(settings.redis_url)) == namespace
        expected = core_model(sent, topology)
        model = stored(client, namespace)
        assert sorted(model) == sorted(expected)
        for sku, fields in model.items():
            position = position_decoder.decode(fields[b"pos"])
            assert int(fields[b"v"]) == position.version
            assert figures(fields[b"proj"], topology) == figures(expected[sku], topology), sku
            assert figures(position, topology) == figures(expected[sku], topology), sku
        # Hand-checked figures: A at dc-east is 100 - 3 - 2 shipped + 1 restocked, safety 4.
        a_east = core.node_view(position_decoder.decode(model["A"][b"pos"]), "dc-east", topology)
        assert (a_east.on_hand, a_east.reserved, a_east.safety_stock) == (96, 0, 4)
        assert client.get(f"{namespace}:order:{{o1}}") is not None
        assert client.ttl(f"{namespace}:rma:{{r1}}") > 0
        assert client.hget(f"{namespace}:meta", "previous") == b"ops"

        # The old generation is untouched and tells its followers where the model went.
        assert client.exists("ops:sku:{OLD}")
        marker = last_entry(client, "ops:changes")
        assert marker == {b"reload": namespace.encode(), b"generation": pointer}

        assert f"rebuilt the model from {len(sent)} message(s): " in captured.out
        assert f"{INVALID} invalid event(s) skipped" in captured.out
        assert "rebuild: read " in captured.err
        (line,) = [r for r in caplog.records if r.name == "stocksync.audit"]
        assert (line.what, line.count) == ("rebuild", len(expected))  # type: ignore[attr-defined]

        # A second rebuild switches again and marks the first generation's stream.
        assert operate.rebuild(settings, args()) == 0
        second = get(client, "ops:generation")
        assert second is not None and second != pointer
        marker = last_entry(client, f"{namespace}:changes")
        assert marker[b"reload"] == f"ops:{second.decode()}".encode()
        again = stored(client, f"ops:{second.decode()}")
        assert sorted(again) == sorted(model)
        for sku, fields in again.items():
            # Versions go on from the previous generation's: an ETag never repeats.
            version = int(fields[b"v"])
            assert version == int(model[sku][b"v"]) * 2, sku
            assert position_decoder.decode(fields[b"pos"]).version == version
            assert projection_decoder.decode(fields[b"proj"]).version == version
            assert figures(fields[b"proj"], topology) == figures(expected[sku], topology), sku
    finally:
        client.close()


async def _resolve(url: str) -> str:
    import redis.asyncio as aioredis

    from stocksync.readmodel.generation import resolve_namespace

    client = aioredis.Redis.from_url(url)
    try:
        return await resolve_namespace(client, "ops")
    finally:
        await client.aclose()


def test_rebuild_refuses_while_a_worker_is_in_the_group(
    rebuilt_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = rebuilt_settings

    async def scenario() -> tuple[str | None, int, int]:
        consumer = AIOKafkaConsumer(
            topic_names(settings).stock,
            bootstrap_servers=settings.broker.removeprefix("kafka://"),
            group_id=settings.worker.group_id,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        await consumer.start()
        try:
            async with asyncio.timeout(30):
                while not consumer.assignment():
                    await consumer.getmany(timeout_ms=500)
            why = await active_workers(settings)
            refused = await asyncio.to_thread(operate.rebuild, settings, args())
            forced = await asyncio.to_thread(operate.rebuild, settings, args(force=True))
            return why, refused, forced
        finally:
            await consumer.stop()

    why, refused, forced = run(scenario())
    assert why is not None and "member(s)" in why
    assert refused == 1
    err = capsys.readouterr().err
    assert "Stop every `stocksync worker` first" in err
    assert "going on despite --force" in err
    assert forced == 0


def test_rebuild_asks_first(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert operate.rebuild(settings, args(yes=False)) == 1
    assert "not confirmed; nothing changed" in capsys.readouterr().err
    client = redis.Redis.from_url(settings.redis_url)
    try:
        assert client.get("ops:generation") is None
    finally:
        client.close()
