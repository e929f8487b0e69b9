"""``rebuild`` over topics filled here: the new generation equals the pure core's model."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import pytest
import redis

from stocksync.agents.stages import Applier, SourceMessage, Translator
from stocksync.agents.topics import topic_names
from stocksync.codecs.messages import decode_message
from stocksync.codecs.state import OrderState, Position, position_decoder
from stocksync.config.settings import NodeSettings, Settings, WorkerSettings
from stocksync.ops import commands
from stocksync.ops.access import open_store
from stocksync.ops.rebuild import _Progress, active_workers, rebuild_generation
from stocksync.readmodel import core
from stocksync.store import Write
from stocksync.store.generation import GENERATION_PATTERN
from stocksync.store.layout import Keys
from stocksync.store.served import decode_detail, decode_served, served_bytes
from tests.ops.helpers import produce, run

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


def figures(served: bytes | Position, topology: core.Topology) -> object:
    """What the API serves of a SKU, without version and time."""
    if isinstance(served, Position):
        served = served_bytes(served, topology)
    decoded = decode_served(served)
    return [
        (c.channel, c.available, msgspec.json.decode(c.document)["status"], nodes)
        for c, nodes in zip(decoded.channels, decode_detail(decoded.detail), strict=True)
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
    base: dict[str, object] = {"yes": True, "force": False}
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
        client.hset("ops:sku:{OLD}", mapping={"v": 1, "pos": b"", "srv": b""})
        caplog.set_level(logging.INFO, logger="stocksync.audit")

        assert commands.rebuild(settings, args()) == 0

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
            assert figures(fields[b"srv"], topology) == figures(expected[sku], topology), sku
            assert figures(position, topology) == figures(expected[sku], topology), sku
        # Hand-checked figures: A at dc-east is 100 - 3 - 2 shipped + 1 restocked, safety 4.
        a_east = core.node_view(position_decoder.decode(model["A"][b"pos"]), "dc-east", topology)
        assert (a_east.on_hand, a_east.reserved, a_east.safety_stock) == (96, 0, 4)
        # Order and RMA state as the worker keeps it: hashes, with a time to live.
        assert client.type(f"{namespace}:order:{{o1}}") == b"hash"
        assert client.type(f"{namespace}:rma:{{r1}}") == b"hash"
        assert client.ttl(f"{namespace}:rma:{{r1}}") > 0
        assert client.get(f"{namespace}:model") == pointer
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
        assert commands.rebuild(settings, args()) == 0
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
            assert decode_served(fields[b"srv"]).version == version
            assert figures(fields[b"srv"], topology) == figures(expected[sku], topology), sku
    finally:
        client.close()


async def _resolve(url: str) -> str:
    from stocksync.store import RedisStore

    store = RedisStore.from_url(url, Keys("ops"))
    try:
        return await store.resolve()
    finally:
        await store.close()


def test_rebuild_refuses_while_a_worker_keeps_a_heartbeat(
    rebuilt_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = rebuilt_settings

    async def beat() -> str | None:
        store = open_store(settings)
        try:
            await store.beat("host:42:abc", 15)
            return await active_workers(store)
        finally:
            await store.close()

    why = run(beat())
    assert why is not None and "host:42:abc" in why
    assert commands.rebuild(settings, args()) == 1
    err = capsys.readouterr().err
    assert "Stop every `stocksync worker` first" in err
    assert commands.rebuild(settings, args(force=True)) == 0
    assert "going on despite --force" in capsys.readouterr().err


def test_a_stopped_worker_does_not_block_a_rebuild(
    rebuilt_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker that stopped cleanly took its heartbeat with it (whatever the broker says)."""
    settings = rebuilt_settings

    async def beat_then_stop() -> None:
        store = open_store(settings)
        try:
            await store.beat("w1", 15)
            await store.forget_worker("w1")
        finally:
            await store.close()

    run(beat_then_stop())
    assert commands.rebuild(settings, args()) == 0


def test_rebuild_refuses_when_the_topics_hold_far_less_than_the_model(
    filled: tuple[Settings, list[tuple[str, str, bytes]]], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, _ = filled
    assert commands.rebuild(settings, args()) == 0
    capsys.readouterr()

    async def grow() -> int:
        # The live model knows many more SKUs than the topics now hold (a broker that
        # lost its history): a rebuild would replace it with a fragment.
        store = open_store(settings)
        try:
            await store.resolve()
            extra = [Write(Position(sku=f"X{i}", version=1), 0) for i in range(40)]
            assert await store.write_batch(extra) == []
            return await store.sku_count()
        finally:
            await store.close()

    live = run(grow())
    client = redis.Redis.from_url(settings.redis_url)
    try:
        before = get(client, "ops:generation")
        assert commands.rebuild(settings, args()) == 1
        err = capsys.readouterr().err
        assert f"but the live model under 'ops:{before.decode()}' has {live:,}" in err  # type: ignore[union-attr]
        assert "Nothing changed; --force rebuilds anyway" in err
        assert get(client, "ops:generation") == before
        assert commands.rebuild(settings, args(force=True)) == 0
        assert "going on despite --force: the topics hold" in capsys.readouterr().err
        assert get(client, "ops:generation") != before
    finally:
        client.close()


def test_progress_never_reads_more_than_expected() -> None:
    out = io.StringIO()
    progress = _Progress(out)
    progress.show(100, 274, 5)
    progress.last = 0.0
    progress.show(344, 274, 9)
    progress.show(344, 274, 9, final=True)
    lines = out.getvalue().splitlines()
    assert lines[0] == "rebuild: read 100 of ~274 messages (36%), 5 SKUs"
    assert lines[1] == "rebuild: read 344 messages (past the ~274 expected), 9 SKUs"
    assert lines[2] == "rebuild: read 344 messages, 9 SKUs"


def test_the_worker_goes_on_from_a_rebuilt_model(
    filled: tuple[Settings, list[tuple[str, str, bytes]]],
) -> None:
    """The translators and the applier read and write what the rebuild wrote."""
    settings, sent = filled
    assert commands.rebuild(settings, args()) == 0
    topology = core.topology_of(settings)
    names = topic_names(settings)
    after = [
        ("orders", "o4", ev("order.allocated", "o4a", order_id="o4",
                             lines=[{"line_id": "1", "node": "dc-west"}])),
        ("orders", "o4", ev("order.shipped", "o4s", "13:00", order_id="o4", shipment_id="7",
                             node="dc-west", lines=[{"line_id": "1", "qty": 5}])),
        ("returns", "r2", ev("return.inspected", "r2i", "13:00", rma_id="r2", node="dc-west",
                              lines=[{"line_id": "1", "qty": 2, "disposition": "restock"}])),
    ]

    async def go_on() -> dict[str, Position]:
        store = open_store(settings)
        letters: list[object] = []
        try:
            await store.resolve()
            applier = Applier(store=store, topology=topology, window_ms=WINDOW_MS,
                              clock=lambda: NOW_MS)

            class Outbox:
                async def send_effects(self, batches: dict[int, bytes]) -> None:
                    await applier.process(list(batches.values()))

                async def send_dead_letters(self, found: Sequence[object]) -> None:
                    letters.extend(found)

            offsets = {"orders": sum(1 for k, _, _ in sent if k == "orders"),
                       "returns": sum(1 for k, _, _ in sent if k == "returns")}
            for kind, key, value in after:
                translator = Translator(kind=kind, effects_partitions=1, outbox=Outbox(),
                                        store=store, window_ms=WINDOW_MS, clock=lambda: NOW_MS)
                topic = names.orders if kind == "orders" else names.returns
                await asyncio.wait_for(translator.process([SourceMessage(
                    topic=topic, partition=0, offset=offsets[kind], key=key.encode(),
                    value=msgspec.json.encode(value))]), 10)
                offsets[kind] += 1
            assert letters == []
            return await store.load_positions(["A", "B"])
        finally:
            await store.close()

    positions = run(go_on())
    expected = core_model(
        sent + [(k, key, msgspec.json.encode(v)) for k, key, v in after], topology
    )
    for sku in ("A", "B"):
        assert figures(positions[sku], topology) == figures(expected[sku], topology), sku


def test_rebuild_asks_first(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.rebuild(settings, args(yes=False)) == 1
    assert "not confirmed; nothing changed" in capsys.readouterr().err
    client = redis.Redis.from_url(settings.redis_url)
    try:
        assert client.get("ops:generation") is None
    finally:
        client.close()


def test_rebuild_keys_watermarks_by_the_live_topics_incarnations(
    filled: tuple[Settings, list[tuple[str, str, bytes]]],
) -> None:
    """After a topic was recreated the worker reads it as incarnation 1: the rebuilt
    watermarks must carry the same keys, or the worker would apply its events again."""
    settings, _ = filled
    names = topic_names(settings)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        # Every partition of the stock topic is in its second incarnation.
        client.hset(
            Keys("ops").incarnations(),
            mapping={f"{names.stock}/{p}": "1 0 0" for p in range(settings.partitions)},
        )
        assert commands.rebuild(settings, args()) == 0
        pointer = get(client, "ops:generation")
        assert pointer is not None
        model = stored(client, f"ops:{pointer.decode()}")
        marks = {src for fields in model.values() for src in position_decoder.decode(
            fields[b"pos"]).wm}
        # The numbers used are stored, with the last record read: after Redis lost the
        # model a healing rebuild restores them, and the workers read the same ones.
        records = client.hgetall(Keys("ops").incarnations())
    finally:
        client.close()
    stock = {src for src in marks if src.startswith(names.stock)}
    assert stock and all(src.endswith("#1") for src in stock), stock
    assert any(src.startswith(names.orders) and "#" not in src for src in marks), marks
    numbers = {field.decode(): int(value.split()[0]) for field, value in records.items()}
    assert {n for f, n in numbers.items() if f.startswith(names.stock)} == {1}
    assert {n for f, n in numbers.items() if f.startswith(names.orders)} == {0}
    assert all(int(value.split()[1]) >= 0 for value in records.values())


def test_a_lost_model_is_rebuilt_with_versions_above_any_served_before(
    filled: tuple[Settings, list[tuple[str, str, bytes]]],
) -> None:
    """Redis lost the model (no old versions to go on from): versions go on from the time."""
    settings, _sent = filled
    client = redis.Redis.from_url(settings.redis_url)

    async def rebuild(lost: bool) -> dict[str, int]:
        store = open_store(settings)
        try:
            await rebuild_generation(settings, store, who="test", lost=lost)
            return {sku: int(fields[b"v"]) for sku, fields in
                    stored(client, store.namespace).items()}
        finally:
            await store.close()

    try:
        healed = run(rebuild(lost=True))
        # Any version served before a loss is below the time in ms (2026-11-27 here).
        assert healed and all(v > NOW_MS for v in healed.values()), healed
        # An operator's rebuild of a live model goes on from its versions, not from the time.
        again = run(rebuild(lost=False))
        assert sorted(again) == sorted(healed)
        for sku, version in again.items():
            assert healed[sku] < version < healed[sku] + 1000, sku
    finally:
        client.close()
