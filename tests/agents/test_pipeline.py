"""Translator and applier wired through an in-memory outbox and store, compared with the core."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec

from stocksync.agents.dlq import DeadLetterOut
from stocksync.agents.pipeline import Applier, SourceMessage, Translator
from stocksync.codecs.dlq import dead_letter_decoder
from stocksync.codecs.projections import projection_decoder
from stocksync.readmodel import core
from stocksync.readmodel.store import MemoryStore

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


def ev(type_: str, event_id: str, **fields: object) -> dict[str, object]:
    """An event of the contract with a default envelope."""
    return {
        "type": type_,
        "schema": 1,
        "event_id": event_id,
        "occurred_at": "2026-11-27T09:00:00Z",
        "source": "test",
        **fields,
    }


class Rig:
    """Three translators and one applier over memory, like one worker."""

    def __init__(self) -> None:
        self.outbox = MemoryOutbox()
        self.store = MemoryStore()
        self.offsets: dict[str, int] = {"stock": 0, "orders": 0, "returns": 0}
        self.translators = {
            kind: Translator(
                kind=kind,
                effects_partitions=4,
                outbox=self.outbox,
                store=None if kind == "stock" else self.store,
                window_ms=DAY_MS,
                clock=lambda: 1_000,
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
        return projection_decoder.decode(self.store.projections[sku]).channels[0].available


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
    version = rig.store.versions["A"]
    rig.feed("stock", [msg])  # same offset: the watermark skips it
    dup = rig.message("stock", "A", adj)  # producer duplicate at a new offset
    rig.feed("stock", [dup])
    assert rig.store.versions["A"] == version
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


def test_a_quantity_beyond_the_limit_is_dead_lettered_and_the_next_event_applies() -> None:
    rig = Rig()
    huge = ev("stock.adjusted", "a1", sku="A", node="dc-west", delta=10**23, reason="receipt")
    fine = ev("stock.adjusted", "a2", sku="A", node="dc-west", delta=3, reason="receipt")
    rig.feed("stock", [rig.message("stock", "A", huge), rig.message("stock", "A", fine)])
    assert rig.available("A") == 3
    (letter,) = [dead_letter_decoder.decode(x.value) for x in rig.outbox.letters]
    assert letter.reason == "invalid_field"
    assert "delta" in letter.message
