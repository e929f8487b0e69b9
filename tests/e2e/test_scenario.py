"""Every event type, valid and invalid, through a real worker: Redis and the DLQ as contracted.

Configuration (see ``harness.CHANNELS``): channel ``web`` sells from dc-east and
dc-west with buffer 1 and low-stock threshold 5; channel ``store`` sells from
store-1 and dc-east with threshold 2; dc-west keeps 2 units of safety stock by
default. Times are minutes after 09:00.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from stocksync.codecs.messages import Reason
from tests.e2e.events import Msg, Wire, bad, bulk, single
from tests.e2e.harness import Cluster, redis_options
from tests.readmodel.oracle import ChannelFigures, NodeFigures

__all__: list[str] = []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RED, BLUE, GREEN, MUG = "TEE-RED-M", "TEE-BLU-L", "TEE-GRN-S", "MUG-WHT"


def scenario(w: Wire) -> list[Msg]:
    """The messages, in the order they are produced; comments give the hand-worked figures."""
    plus_20 = w.adjusted(RED, "dc-east", 20, 15, reason="receipt")
    shipped_over = w.shipped("o-102", "dc-west", {"1": 5}, at=34)
    restock = w.inspected("rma-1", "dc-east", [("1", 1, "restock")], at=60)
    base = w.snapshot(RED, "dc-east", 1, 70)
    return [
        # RED at dc-east: counted 100 as of 10; +20 at 15 counts, -5 at 5 predates the count.
        single(w.snapshot(RED, "dc-east", 100, 10, at=11)),
        single(plus_20),
        single(w.adjusted(RED, "dc-east", -5, 5, reason="shrink")),
        # An older count arriving after the newer one changes nothing.
        single(w.snapshot(RED, "dc-east", 999, 8, at=12)),
        # The producer sends +20 again: same source and event_id, new offset.
        single(plus_20),
        # Safety stock 3 set at 1 wins over 7 set at 0 that arrives later.
        single(w.policy(RED, "dc-east", 3, 1)),
        single(w.policy(RED, "dc-east", 7, 0)),
        single(w.snapshot(MUG, "dc-east", 5, 10)),
        # An ERP export: SKUs mixed under an unrelated key, with a second copy of +20 inside.
        bulk("stock", "erp-export-1", [
            w.snapshot(BLUE, "dc-west", 40, 10),
            w.snapshot(GREEN, "store-1", 12, 10),
            w.adjusted(RED, "dc-west", 30, 12, reason="transfer_in"),
            plus_20,
        ]),
        # A cycle count with a negative count in the middle: only that one is dead-lettered.
        bulk("stock", "wms-count-7", [
            w.snapshot(GREEN, "dc-east", 9, 20),
            bad(w.snapshot(BLUE, "dc-east", 0, 20) | {"on_hand": -1}, Reason.INVALID_FIELD),
            w.adjusted(BLUE, "dc-west", -4, 20, reason="shrink"),
        ]),
        # o-100 on web without nodes: RED 2 (allocated to dc-east, shipped in full),
        # BLUE 3 (1 cancelled: 2 stay unallocated web demand).
        single(w.created("o-100", [("1", RED, 2, None), ("2", BLUE, 3, None)], at=29)),
        single(w.allocated("o-100", {"1": "dc-east"}, at=30)),
        single(w.shipped("o-100", "dc-east", {"1": 2}, at=31, shipment_id="551")),
        single(w.cancelled("o-100", {"2": 1}, at=32)),
        # o-101 on store with nodes, then cancelled as a whole.
        single(w.created("o-101", [("1", GREEN, 4, "store-1"), ("2", RED, 5, "dc-east")],
                         channel="store", at=29)),
        single(w.cancelled("o-101", at=33)),
        # o-102: 3 reserved at dc-west, 5 shipped from there (over-shipped), and shipped again
        # by the producer (same event_id): on_hand drops by 5 once.
        single(w.created("o-102", [("1", RED, 3, "dc-west")], at=29)),
        single(shipped_over),
        single(shipped_over),
        # o-103: BLUE 4 unallocated on web, 1 shipped from dc-west (3 stay as demand).
        single(w.created("o-103", [("1", BLUE, 4, None)], at=35)),
        single(w.shipped("o-103", "dc-west", {"1": 1}, at=40, shipment_id="552")),
        # o-104 in one bulk under its key: created at store-1, allocated to dc-east; the
        # cancellation of o-100 inside it belongs to another key and is dead-lettered.
        bulk("orders", "o-104", [
            w.created("o-104", [("1", GREEN, 1, "store-1")], channel="store", at=41),
            w.allocated("o-104", {"1": "dc-east"}, at=42),
            bad(w.cancelled("o-100", at=43), Reason.KEY_MISMATCH),
        ]),
        # rma-1: RED line authorized, 2 received at dc-east without sku, 1 restocked,
        # 1 damaged (the restock sent twice by the producer): quarantine 0, on_hand +1.
        single(w.authorized("rma-1", {"1": (RED, 2)}, order_id="o-100", at=50)),
        single(w.received("rma-1", "dc-east", [("1", 2, None)], at=55)),
        single(restock),
        single(restock),
        single(w.inspected("rma-1", "dc-east", [("1", 1, "damaged")], at=61)),
        # rma-2: never authorized, received with its sku; 2 of 3 refurbished: quarantine 1.
        single(w.received("rma-2", "store-1", [("1", 3, GREEN)], at=55)),
        single(w.inspected("rma-2", "store-1", [("1", 2, "refurbish")], at=62)),
        # Invalid events, each dead-lettered alone.
        single(bad(b'{"type":"stock.snapshot","schema":1,', Reason.MALFORMED_JSON),
               kind="stock", key=RED),
        single(bad(base | {"type": "stock.teleported"}, Reason.UNKNOWN_TYPE),
               kind="stock", key=RED),
        single(bad(base | {"schema": 2}, Reason.UNSUPPORTED_SCHEMA), kind="stock", key=RED),
        single(bad({k: v for k, v in base.items() if k != "on_hand"}, Reason.INVALID_FIELD),
               kind="stock", key=RED),
        single(bad(base | {"sku": "TEE RED!"}, Reason.INVALID_FIELD), kind="stock", key=RED),
        single(bad(w.created("o-105", [("1", RED, 2, None)]) | {
            "lines": [{"line_id": "1", "sku": RED, "qty": -2}]}, Reason.INVALID_FIELD),
            kind="orders", key="o-105"),
        single(bad(b"[]", Reason.BULK_SIZE), kind="stock", key="empty-export"),
        # Judged against state (the reference rejects them): no such order, line or RMA.
        single(w.allocated("o-404", {"1": "dc-east"}, at=70),
               headers=[("correlation_id", b"corr-404")]),
        single(w.shipped("o-100", "dc-east", {"9": 1}, at=71)),
        single(w.inspected("rma-404", "dc-east", [("1", 1, "restock")], at=72)),
    ]


@pytest.mark.parametrize("redis_kind", ["redis", "redis-cluster"])
def test_every_event_type_reaches_redis_as_the_contract_says(
    make_cluster: Callable[..., Cluster], request: pytest.FixtureRequest, redis_kind: str
) -> None:
    """One worker, one scripted stream: every SKU/channel/node equals the reference, and the
    dead-letter topic holds exactly the invalid events, whole, with why and where; on one
    Redis and on a three-master Redis Cluster."""
    cluster = make_cluster(partitions=4, **redis_options(request, redis_kind))
    cluster.start_worker()
    messages = scenario(cluster.wire)
    cluster.send(messages)
    cluster.settle()

    reference = cluster.check_model()
    seen = cluster.read_model()
    # The figures worked out by hand in scenario() agree with the reference.
    assert seen.nodes[(RED, "dc-east")] == NodeFigures(119, 0, 0, 3, 116)
    assert seen.nodes[(RED, "dc-west")] == NodeFigures(25, 0, 0, 2, 23)
    assert seen.channels[(RED, "web")] == ChannelFigures(138, "in_stock")
    assert seen.channels[(RED, "store")] == ChannelFigures(116, "in_stock")
    assert seen.nodes[(BLUE, "dc-west")] == NodeFigures(35, 0, 0, 2, 33)
    assert seen.nodes[(BLUE, "dc-east")] == NodeFigures(0, 0, 0, 0, 0)
    assert seen.channels[(BLUE, "web")] == ChannelFigures(27, "in_stock")
    assert seen.channels[(BLUE, "store")] == ChannelFigures(0, "out_of_stock")
    assert seen.nodes[(GREEN, "store-1")] == NodeFigures(12, 0, 1, 0, 12)
    assert seen.nodes[(GREEN, "dc-east")] == NodeFigures(9, 1, 0, 0, 8)
    assert seen.channels[(GREEN, "store")] == ChannelFigures(20, "in_stock")
    assert seen.channels[(MUG, "web")] == ChannelFigures(4, "low_stock")

    letters = cluster.read_dead_letters(len(reference.dead))
    by_spot = {letter.spot: letter for letter in letters}
    assert len(by_spot) == len(letters), "a dead letter was written twice"
    want = {expected.spot: expected for expected in reference.dead}
    assert sorted(by_spot) == sorted(want)
    assert sorted(s.reason for s in want) == sorted([
        Reason.INVALID_FIELD, Reason.KEY_MISMATCH, Reason.MALFORMED_JSON, Reason.UNKNOWN_TYPE,
        Reason.UNSUPPORTED_SCHEMA, Reason.INVALID_FIELD, Reason.INVALID_FIELD,
        Reason.INVALID_FIELD, Reason.BULK_SIZE, Reason.UNKNOWN_ORDER, Reason.UNKNOWN_LINE,
        Reason.UNKNOWN_RMA,
    ])
    for spot, expected in want.items():
        letter = by_spot[spot]
        record = letter.record
        assert record["key"] == expected.key
        assert letter.key == (expected.key or "").encode()
        assert letter.headers["reason"] == spot.reason.encode()
        assert letter.headers["source_offset"] == str(spot.offset).encode()
        assert record.get("correlation_id") == expected.correlation_id
        try:
            event = json.loads(expected.raw)
        except ValueError:
            assert record["event_text"] == expected.raw.decode()
        else:
            assert record["event"] == event, spot
    unknown_order = next(s for s in want if s.reason == Reason.UNKNOWN_ORDER)
    assert by_spot[unknown_order].record["correlation_id"] == "corr-404"
    assert by_spot[unknown_order].record["topic"] == cluster.topics["orders"]


def test_a_quantity_beyond_64_bits_is_dead_lettered_not_fatal(
    make_cluster: Callable[..., Cluster],
) -> None:
    """An absurd quantity is an invalid event: dead-lettered, and the events after it applied."""
    cluster = make_cluster(partitions=2)
    worker = cluster.start_worker()
    w = cluster.wire
    huge = w.adjusted(RED, "dc-east", 10**23, 5)
    cluster.send([
        single(bad(huge, Reason.INVALID_FIELD), kind="stock", key=RED),
        single(w.snapshot(RED, "dc-east", 7, 10)),
    ])
    cluster.settle(timeout=30)
    reference = cluster.check_model()
    cluster.check_dead_letters(reference, exactly_once=True)
    assert worker.alive


def test_the_contracts_clarifications_hold_through_a_real_worker(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Ties, nanoseconds, pair keys, quantity and offset limits, bytes and nesting
    ("Clarifications (2026-12)"), produced to the broker and read back from Redis."""
    cluster = make_cluster(partitions=2)
    worker = cluster.start_worker()
    w = cluster.wire
    as_of = "2026-11-27T09:10:00.000000100Z"
    greater = w.snapshot(RED, "dc-east", 50, 10, source="wms") | {"as_of": as_of}
    lesser = w.snapshot(BLUE, "dc-east", 7, 10, source="erp") | {"sku": RED, "as_of": as_of}
    one = w.adjusted(BLUE, "dc-east", 1, 5) | {"source": "a\x1fb", "event_id": "c"}
    other = w.adjusted(BLUE, "dc-east", 2, 5) | {"source": "a", "event_id": "b\x1fc"}
    deep = w.adjusted(GREEN, "dc-east", 1000, 20)
    deep_value = json.dumps(deep)[:-1].encode() + b',"x":' + b"[" * 64 + b"]" * 64 + b"}"
    cluster.send([
        single(greater),
        single(lesser),  # same instant, the lesser (source, event_id): changes nothing
        single(w.adjusted(RED, "dc-east", 3, 10) | {"occurred_at": "2026-11-27T09:10:00.0000004Z"}),
        single(w.adjusted(RED, "dc-east", 100, 10) | {"occurred_at": as_of}),  # in the count
        single(one),
        single(other),  # joins to the same string as `one`: a different event
        single(one),    # a real copy
        bulk("stock", "erp-export-9", [
            w.snapshot(GREEN, "dc-east", 10, 10),
            bad(w.policy(GREEN, "dc-east", 1, 10) | {"occurred_at": "2026-11-27T09:10:00+0530"},
                Reason.INVALID_FIELD),
            bad(w.policy(GREEN, "dc-east", 1, 10)
                | {"occurred_at": "9999-12-31T23:59:59-01:00"}, Reason.INVALID_FIELD),
            bad(w.adjusted(GREEN, "dc-east", 10**9 + 1, 20), Reason.INVALID_FIELD),
            bad(deep_value, Reason.MALFORMED_JSON),
            w.adjusted(GREEN, "dc-east", -(10**9), 30),
        ]),
        single(bad(json.dumps(w.adjusted(GREEN, "dc-east", 5, 40))[:-1].encode()
                   + b',"note":"caf\xe9"}', Reason.MALFORMED_JSON), kind="stock", key=GREEN),
        single(w.snapshot(MUG, "dc-east", 4, 10)),
    ])
    cluster.settle(timeout=60)
    reference = cluster.check_model()
    cluster.check_dead_letters(reference, exactly_once=True)
    seen = cluster.read_model()
    assert seen.nodes[(RED, "dc-east")].on_hand == 53
    assert seen.nodes[(BLUE, "dc-east")].on_hand == 3
    assert seen.nodes[(GREEN, "dc-east")].on_hand == 10 - 10**9
    assert worker.alive
