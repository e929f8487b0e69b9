"""Translator and applier wired through an in-memory outbox and store, compared with the core."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec

from stocksync.agents.dlq import DeadLetterOut
from stocksync.agents.metrics import WorkerMetrics
from stocksync.agents.owners import Owners
from stocksync.agents.stages import Applier, SourceMessage, Translator
from stocksync.codecs.dlq import dead_letter_decoder
from stocksync.codecs.effects import batch_decoder
from stocksync.config.settings import DlqSettings
from stocksync.readmodel import core
from stocksync.store import MemoryStore
from tests.agents.events import ev

DAY_MS = 86_400_000
TOPOLOGY = core.Topology(
    channels=(core.ChannelSpec(name="web", nodes=("dc-east", "dc-west"), low_stock_threshold=5),),
    safety_defaults={"dc-east": 2},
)


class MemoryOutbox:
    """Keeps what translators send, in order."""

    def __init__(self) -> None:
        self.effects: list[tuple[int, bytes]] = []
        self.letters: list[DeadLetterOut] = []

    async def send_effects(self, batches: dict[int, bytes]) -> None:
        self.effects.extend(batches.items())

    async def send_dead_letters(self, letters: Sequence[DeadLetterOut]) -> None:
        self.letters.extend(letters)


class Rig:
    """Three translators and one applier over memory, like one worker."""

    def __init__(self, owners: Owners | None = None) -> None:
        self.outbox = MemoryOutbox()
        self.store = asyncio.run(MemoryStore.fresh(TOPOLOGY))
        self.metrics = WorkerMetrics()
        self.offsets: dict[str, int] = {"stock": 0, "orders": 0, "returns": 0}
        self.translators = {
            kind: Translator(
                kind=kind,
                effects_partitions=4,
                outbox=self.outbox,
                store=None if kind == "stock" else self.store,
                window_ms=DAY_MS,
                clock=lambda: 1_000,
                metrics=self.metrics,
                owners=owners,
            )
            for kind in self.offsets
        }
        self.applier = Applier(
            store=self.store, topology=TOPOLOGY, window_ms=DAY_MS, clock=lambda: 2_000
        )

    def message(self, kind: str, key: str, value: object) -> SourceMessage:
        offset = self.offsets[kind]
        self.offsets[kind] += 1
        raw = value if isinstance(value, bytes) else msgspec.json.encode(value)
        return SourceMessage(
            topic=f"stocksync.{kind}.v1", partition=0, offset=offset, key=key.encode(), value=raw
        )

    def feed(self, kind: str, messages: list[SourceMessage]) -> None:
        async def main() -> None:
            await self.translators[kind].process(messages)
            effects = [payload for _, payload in self.outbox.effects]
            self.outbox.effects.clear()
            await self.applier.process(effects)

        asyncio.run(main())

    def available(self, sku: str) -> int:
        served = self.store.served_of(sku)
        assert served is not None
        return served.channels[0].available


def test_order_lifecycle_end_to_end_in_memory() -> None:
    rig = Rig()
    snap = ev("stock.snapshot", "s1", sku="A", node="dc-east", on_hand=120,
              as_of="2026-11-27T08:00:00Z")
    rig.feed("stock", [rig.message("stock", "A", snap)])
    assert rig.available("A") == 118  # safety stock 2 at dc-east
    created = ev("order.created", "o1", order_id="9912", channel="web",
                 lines=[{"line_id": "1", "sku": "A", "qty": 2}])
    rig.feed("orders", [rig.message("orders", "9912", created)])
    assert rig.available("A") == 116
    shipped = ev("order.shipped", "o2", order_id="9912", shipment_id="551", node="dc-east",
                 lines=[{"line_id": "1", "qty": 2}], occurred_at="2026-11-27T10:00:00Z")
    rig.feed("orders", [rig.message("orders", "9912", shipped)])
    assert rig.available("A") == 116  # reservation released, on_hand 118


def test_redelivered_batch_changes_nothing() -> None:
    rig = Rig()
    adj = ev("stock.adjusted", "a1", sku="A", node="dc-west", delta=5, reason="receipt")
    msg = rig.message("stock", "A", adj)
    rig.feed("stock", [msg])
    version = rig.store.version_of("A")
    rig.feed("stock", [msg])  # same offset: the watermark skips it
    dup = rig.message("stock", "A", adj)  # producer duplicate at a new offset
    rig.feed("stock", [dup])
    assert rig.store.version_of("A") == version
    assert rig.available("A") == 5


def test_invalid_events_go_to_the_dead_letters_and_the_rest_applies() -> None:
    rig = Rig()
    good = ev("stock.adjusted", "a1", sku="A", node="dc-west", delta=5, reason="receipt")
    bad = ev("stock.adjusted", "a2", sku="A", node="dc-west", delta=0, reason="receipt")
    bulk = rig.message("stock", "any", [good, bad])
    unknown = rig.message("orders", "x", ev("order.cancelled", "c1", order_id="x"))
    rig.feed("stock", [bulk, rig.message("stock", "A", b"{not json")])
    rig.feed("orders", [unknown])
    assert rig.available("A") == 5
    letters = [dead_letter_decoder.decode(letter.value) for letter in rig.outbox.letters]
    assert [(d.reason, d.offset, d.index) for d in letters] == [
        ("invalid_field", 0, 1),
        ("malformed_json", 1, None),
        ("unknown_order", 0, None),
    ]
    assert isinstance(letters[0].event, msgspec.Raw)
    assert msgspec.json.decode(letters[0].event) == bad
    assert letters[1].event_text == "{not json"


def test_every_dead_letter_names_its_owner_and_is_counted_by_reason_and_owner() -> None:
    owners = Owners(DlqSettings(owners={"wms-*": "warehouse", "shop": "finance"}))
    rig = Rig(owners)
    wms = ev("stock.adjusted", "a1", sku="A", node="dc-west", delta=0, reason="receipt",
             source="wms-east")
    erp = ev("stock.adjusted", "a2", sku="A", node="dc-west", delta=0, reason="receipt",
             source="erp")
    shop = ev("order.cancelled", "c1", order_id="x", source="shop")
    oms = ev("order.cancelled", "c2", order_id="y", source="oms")
    rig.feed("stock", [rig.message("stock", "any", [wms, erp]),
                       rig.message("stock", "A", b"{not json")])
    rig.feed("orders", [rig.message("orders", "x", shop), rig.message("orders", "y", oms)])
    letters = [dead_letter_decoder.decode(letter.value) for letter in rig.outbox.letters]
    assert [(d.reason, d.owner) for d in letters] == [
        ("invalid_field", "warehouse"),  # a pattern on the source, read from a bad event
        ("invalid_field", "erp"),  # no pattern: the stock topic's default
        ("malformed_json", "erp"),  # no readable source
        ("unknown_order", "finance"),
        ("unknown_order", "commerce"),  # the orders topic's default
    ]
    assert [dict(x.headers)["owner"] for x in rig.outbox.letters] == [
        b"warehouse", b"erp", b"erp", b"finance", b"commerce"
    ]
    value = rig.metrics.registry.get_sample_value
    assert value("stocksync_dead_letters_total",
                 {"reason": "invalid_field", "owner": "erp"}) == 1
    assert value("stocksync_dead_letters_total",
                 {"reason": "invalid_field", "owner": "warehouse"}) == 1
    assert value("stocksync_dead_letters_total",
                 {"reason": "malformed_json", "owner": "erp"}) == 1
    assert value("stocksync_dead_letters_total",
                 {"reason": "unknown_order", "owner": "finance"}) == 1
    assert value("stocksync_dead_letters_total",
                 {"reason": "unknown_order", "owner": "commerce"}) == 1


def test_a_quantity_beyond_the_limit_is_dead_lettered_and_the_next_event_applies() -> None:
    rig = Rig()
    huge = ev("stock.adjusted", "a1", sku="A", node="dc-west", delta=10**23, reason="receipt")
    fine = ev("stock.adjusted", "a2", sku="A", node="dc-west", delta=3, reason="receipt")
    rig.feed("stock", [rig.message("stock", "A", huge), rig.message("stock", "A", fine)])
    assert rig.available("A") == 3
    (letter,) = [dead_letter_decoder.decode(x.value) for x in rig.outbox.letters]
    assert letter.reason == "invalid_field"
    assert "delta" in letter.message


def test_a_batch_is_sent_in_chunks_with_the_same_effects_as_whole() -> None:
    """Chunks of a batch carry order state from one to the next and send what one pass would."""

    def run(chunk_events: int) -> tuple[list[list[bytes]], dict[str, int]]:
        rig = Rig()
        rig.translators["orders"].chunk_events = chunk_events
        sends: list[list[bytes]] = []
        outbox_send = rig.outbox.send_effects

        async def send_effects(batches: dict[int, bytes]) -> None:
            sends.append([batches[p] for p in sorted(batches)])
            await outbox_send(batches)

        rig.outbox.send_effects = send_effects  # type: ignore[method-assign]
        snaps = [
            ev("stock.snapshot", f"s{i}", sku=f"S{i}", node="dc-east", on_hand=50,
               as_of="2026-11-27T08:00:00Z")
            for i in range(6)
        ]
        rig.feed("stock", [rig.message("stock", "any", snaps)])
        sends.clear()
        messages = []
        for i in range(6):
            order = f"o{i}"
            line = [{"line_id": "1", "sku": f"S{i}", "qty": 3}]
            messages.append(rig.message("orders", order, ev(
                "order.created", f"c{i}", order_id=order, channel="web", node="dc-east",
                lines=line)))
            messages.append(rig.message("orders", order, ev(
                "order.shipped", f"x{i}", order_id=order, shipment_id=f"p{i}", node="dc-east",
                lines=[{"line_id": "1", "qty": 1}], occurred_at="2026-11-27T10:00:00Z")))
        rig.feed("orders", messages)
        return sends, {f"S{i}": rig.available(f"S{i}") for i in range(6)}

    whole, whole_model = run(chunk_events=2000)
    chunked, chunked_model = run(chunk_events=3)
    assert len(whole) == 1 and len(chunked) == 4  # 12 events in chunks of 3 (and no more)
    assert chunked_model == whole_model == {f"S{i}": 45 for i in range(6)}  # 49 - 2 - 2
    def effects(sends: list[list[bytes]]) -> list[bytes]:
        return sorted(
            msgspec.msgpack.encode(effect)
            for send in sends
            for payload in send
            for effect in batch_decoder.decode(payload).effects
        )

    assert len(effects(whole)) == 6 * 3
    assert effects(chunked) == effects(whole)
