"""The contract's rules, one table each, run through the core and the brute-force oracle.

Every case states the figures the contract asks for by hand; :func:`settle`
runs the events through the core (the worker's wiring, :mod:`.worker`) and
through the oracle (:mod:`.oracle`) and requires all three to agree, so these
tables also keep the oracle honest.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stocksync.codecs.effects import EffectBatch, batch_decoder, batch_encoder
from stocksync.codecs.events import MAX_LINES, MAX_QUANTITY, Event
from stocksync.codecs.messages import Reason
from stocksync.codecs.state import OrderState, Position, position_decoder, state_encoder
from stocksync.config.settings import ChannelSettings, NodeSettings, Settings
from stocksync.readmodel.core import (
    ChannelSpec,
    Rejected,
    Skipped,
    SourceRef,
    Topology,
    Translated,
    apply_effects,
    check_placement,
    copy_position,
    format_millis,
    is_oversold,
    node_view,
    topology_of,
    translate,
)
from tests.readmodel.memory_worker import NOW_MS, WINDOW_MS, MemoryWorker, build_model
from tests.readmodel.oracle import (
    APPLIED,
    DUPLICATE,
    ChannelFigures,
    Model,
    NodeFigures,
    expected_model,
)
from tests.readmodel.scenarios import (
    PLUS_TWO,
    adjusted,
    allocated,
    authorized,
    cancelled,
    created,
    inspected,
    policy,
    received,
    shipped,
    snapshot,
    t,
)

A, B = "SKU-A", "SKU-B"
EAST, WEST, STORE = "dc-east", "dc-west", "store-1"
SKUS = (A, B)
NODES = (EAST, WEST, STORE)
#: web sells from both DCs; shop from the store, keeping a buffer of 1.
TOPOLOGY = Topology(
    channels=(
        ChannelSpec(name="web", nodes=(EAST, WEST), buffer=0, low_stock_threshold=3),
        ChannelSpec(name="shop", nodes=(STORE,), buffer=1, low_stock_threshold=2),
    ),
)


def settle(events: list[Event], topology: Topology = TOPOLOGY) -> Model:
    """The model after ``events``, from the core; the oracle must agree."""
    got = build_model(events, topology, SKUS, NODES)
    assert got == expected_model(events, topology, SKUS, NODES)
    return got


def at(model: Model, sku: str, node: str) -> NodeFigures:
    return model.nodes[(sku, node)]


def figures(on_hand: int = 0, reserved: int = 0, quarantine: int = 0, safety_stock: int = 0
            ) -> NodeFigures:
    """Node figures with ``available`` derived as the contract says."""
    available = max(0, on_hand - reserved - safety_stock)
    return NodeFigures(on_hand, reserved, quarantine, safety_stock, available)


def ref(offset: int, *, partition: int = 0, index: int = 0, kind: str = "orders") -> SourceRef:
    return SourceRef(kind=kind, partition=partition, offset=offset, index=index,
                     topic=f"stocksync.{kind}.v1")


# --- on_hand: snapshots and physical changes ---------------------------------------------


def test_snapshot_then_later_delta_adds_to_the_count() -> None:
    model = settle([snapshot(A, EAST, 120, as_of=0), adjusted(A, EAST, -7, at=1),
                    adjusted(A, EAST, 3, at=2)])
    assert at(model, A, EAST) == figures(on_hand=116)


@pytest.mark.parametrize("delta_at", [0, -1], ids=["at-as_of", "before-as_of"])
@pytest.mark.parametrize("delta_first", [True, False], ids=["delta-first", "snapshot-first"])
def test_delta_not_later_than_snapshot_as_of_is_ignored(delta_at: int, delta_first: bool) -> None:
    snap, delta = snapshot(A, EAST, 10, as_of=5), adjusted(A, EAST, 4, at=5 + delta_at)
    model = settle([delta, snap] if delta_first else [snap, delta])
    assert at(model, A, EAST).on_hand == 10


def test_late_snapshot_reapplies_deltas_after_its_as_of() -> None:
    events = [
        snapshot(A, EAST, 10, as_of=0),
        adjusted(A, EAST, 3, at=2),    # before the late snapshot's as_of: counted in it
        adjusted(A, EAST, -1, at=5),   # after it: applies on top
        adjusted(A, EAST, 6, at=3),    # exactly at it: counted in it
        snapshot(A, EAST, 20, as_of=3, at=9),
    ]
    assert at(settle(events), A, EAST).on_hand == 19


@pytest.mark.parametrize(
    ("second_as_of", "expected"),
    [(4, 10), (6, 99)],
    ids=["earlier-as_of-changes-nothing", "later-as_of-replaces"],
)
def test_stale_snapshot_changes_nothing(second_as_of: int, expected: int) -> None:
    events = [snapshot(A, EAST, 10, as_of=5), snapshot(A, EAST, 99, as_of=second_as_of),
              adjusted(A, EAST, 2, at=7)]
    assert at(settle(events), A, EAST).on_hand == expected + 2


# --- clarifications (2026-12): ties, by the greater (source, event_id) --------------------


@pytest.mark.parametrize(
    ("first", "second", "winner"),
    [
        (("erp", "e-1"), ("erp", "e-2"), 2),
        (("erp", "e-2"), ("erp", "e-1"), 1),
        (("wms", "a"), ("erp", "z"), 1),        # source first, then event_id
        (("erp", "e-10"), ("erp", "e-9"), 2),   # compared as strings, not numbers
        (("erp", "x"), ("erp\x1f", ""), 2),
    ],
)
@pytest.mark.parametrize("order", ["as-listed", "reversed"])
def test_equal_as_of_goes_to_the_greater_source_event_id_pair_whatever_the_order(
    first: tuple[str, str], second: tuple[str, str], winner: int, order: str
) -> None:
    moment = "2026-11-27T09:05:00.000000300Z"
    one = snapshot(A, EAST, 1, as_of=moment, source=first[0], eid=first[1])
    two = snapshot(A, EAST, 2, as_of="2026-11-27T11:05:00.0000003+02:00", source=second[0],
                   eid=second[1])
    events = [one, two] if order == "as-listed" else [two, one]
    later = adjusted(A, EAST, 10, at="2026-11-27T09:05:00.000000301Z")
    tied = adjusted(A, EAST, 100, at=moment)   # at the as_of itself: counted in either count
    assert at(settle([*events, later, tied]), A, EAST).on_hand == winner + 10


@pytest.mark.parametrize("order", ["as-listed", "reversed"])
def test_equal_policy_occurred_at_goes_to_the_greater_pair_whatever_the_order(
    order: str
) -> None:
    low = policy(A, EAST, 4, at=3, source="erp", eid="p-1")
    high = policy(A, EAST, 1, at=t(3).astimezone(PLUS_TWO), source="erp", eid="p-2")
    older = policy(A, EAST, 7, at=2, source="zzz", eid="zzz")
    events = [low, high, older] if order == "as-listed" else [older, high, low]
    model = settle([snapshot(A, EAST, 10, as_of=0), *events])
    assert at(model, A, EAST) == figures(on_hand=10, safety_stock=1)


def test_a_snapshot_tie_with_a_position_stored_before_pairs_were_kept_keeps_it() -> None:
    worker = MemoryWorker(TOPOLOGY)
    assert worker.deliver(snapshot(A, EAST, 5, as_of=1, eid="a")) == APPLIED
    node = worker.positions[A].nodes[EAST]
    node.snap_by = None  # as converted from the stored form before this one
    assert worker.deliver(snapshot(A, EAST, 9, as_of=1, eid="b")) == APPLIED
    assert node.snap == 5
    assert worker.deliver(snapshot(A, EAST, 9, as_of=2, eid="c")) == APPLIED
    assert (node.snap, node.snap_by) == (9, ("erp", "c"))


# --- clarifications (2026-12): full-precision times ---------------------------------------


@pytest.mark.parametrize(
    ("delta_at", "counts"),
    [
        ("2026-11-27T09:05:00.0000003Z", True),       # 0.3 µs after the snapshot
        ("2026-11-27T09:05:00.000000001Z", True),     # 1 ns after
        ("2026-11-27T09:05:00.000000000Z", False),    # the same instant
        ("2026-11-27T11:05:00.000000001+02:00", True),
        ("2026-11-27T09:04:59.999999999Z", False),
        ("2026-11-27T09:05:00.0000000009Z", False),   # below a nanosecond: truncated
    ],
)
def test_a_change_a_fraction_of_a_microsecond_after_the_snapshot_counts(
    delta_at: str, counts: bool
) -> None:
    events = [snapshot(A, EAST, 10, as_of="2026-11-27T09:05:00Z"),
              adjusted(A, EAST, 3, at=delta_at)]
    assert at(settle(events), A, EAST).on_hand == 10 + (3 if counts else 0)
    assert at(settle(events[::-1]), A, EAST).on_hand == 10 + (3 if counts else 0)


def test_policies_compare_at_full_precision() -> None:
    events = [policy(A, EAST, 2, at="2026-11-27T09:05:00.0000002Z"),
              policy(A, EAST, 5, at="2026-11-27T09:05:00.0000001Z", eid="zzz", source="zzz")]
    assert at(settle(events), A, EAST).safety_stock == 2


def test_instants_at_both_ends_of_the_years_0001_to_9999_compare() -> None:
    last = "9999-12-31T23:59:59.999999999Z"
    events = [
        snapshot(A, EAST, 10, as_of="9999-12-31T22:59:59.999999998-01:00"),
        adjusted(A, EAST, 1, at=last),
        adjusted(A, EAST, 100, at="0001-01-01T00:00:00Z"),
        snapshot(B, EAST, 7, as_of="0000-12-31T23:00:00-01:00"),  # 0001-01-01T00:00Z
        adjusted(B, EAST, 2, at="0001-01-01T00:00:00.000000001Z"),
    ]
    model = settle(events)
    assert (at(model, A, EAST).on_hand, at(model, B, EAST).on_hand) == (11, 9)
    worker = MemoryWorker(TOPOLOGY)
    for event in events:
        worker.deliver(event)
    batch = EffectBatch(worker.sent)
    assert batch_decoder.decode(batch_encoder.encode(batch)) == batch
    position = worker.positions[A]
    assert position_decoder.decode(state_encoder.encode(position)) == position


# --- clarifications (2026-12): the idempotency key is a pair ------------------------------


def test_pairs_that_join_to_the_same_string_are_different_stock_events() -> None:
    one = adjusted(A, EAST, 1, at=1, source="a\x1fb", eid="c")
    other = adjusted(A, EAST, 2, at=1, source="a", eid="b\x1fc")
    model = settle([one, other, one, other])
    assert model.verdicts == [APPLIED, APPLIED, DUPLICATE, DUPLICATE]
    assert at(model, A, EAST).on_hand == 3


def test_pairs_that_join_to_the_same_string_are_different_order_and_return_events() -> None:
    ship = shipped("o1", EAST, {"1": 1}, source="a\x1fb", eid="c")
    ship_too = shipped("o1", EAST, {"1": 1}, source="a", eid="b\x1fc")
    receipt = received("r1", EAST, [("1", 1, A)], source="a\x1fb", eid="c")
    receipt_too = received("r1", EAST, [("1", 1, A)], source="a", eid="b\x1fc")
    model = settle([created("o1", [("1", A, 3, EAST)]), ship, ship_too, ship,
                    receipt, receipt_too, receipt_too])
    assert model.verdicts == [APPLIED, APPLIED, APPLIED, DUPLICATE, APPLIED, APPLIED, DUPLICATE]
    assert at(model, A, EAST) == figures(on_hand=-2, reserved=1, quarantine=2)


def test_effects_and_states_carry_the_pair() -> None:
    worker = MemoryWorker(TOPOLOGY)
    worker.deliver(adjusted(A, EAST, 1, at=1, source="a\x1fb", eid="c"))
    worker.deliver(created("o1", [("1", A, 3, EAST)], source="shop", eid="x\x1fy"))
    assert worker.sent[0].eid == ("a\x1fb", "c")
    assert list(worker.positions[A].seen) == [("a\x1fb", "c")]
    assert list(worker.states[("order", "o1")].seen) == [("shop", "x\x1fy")]


def test_no_snapshot_on_hand_is_the_sum_of_physical_changes() -> None:
    events = [
        adjusted(A, EAST, 5, at=1),
        adjusted(A, EAST, -2, at=2),
        created("o1", [("1", A, 1, EAST)]),
        shipped("o1", EAST, {"1": 4}, at=3),
        received("r1", EAST, [("1", 2, A)]),
        inspected("r1", EAST, [("1", 2, "restock")], at=4),
    ]
    assert at(settle(events), A, EAST) == figures(on_hand=1)


def test_on_hand_may_go_negative_but_available_stays_at_zero() -> None:
    model = settle([adjusted(A, EAST, -4, at=1), policy(A, EAST, 1, at=1)])
    assert at(model, A, EAST) == NodeFigures(-4, 0, 0, 1, 0)


def test_times_are_compared_as_utc_instants() -> None:
    # 11:05+02:00 is 09:05Z: the delta at 09:04Z is before the snapshot, the one at 09:06Z after.
    events = [
        snapshot(A, EAST, 10, as_of=t(5).astimezone(PLUS_TWO)),
        adjusted(A, EAST, 100, at=t(4)),
        adjusted(A, EAST, 1, at=t(6).astimezone(PLUS_TWO)),
    ]
    assert at(settle(events), A, EAST).on_hand == 11


def test_physical_changes_of_orders_and_returns_follow_the_snapshot_rule() -> None:
    events = [
        created("o1", [("1", A, 2, EAST)]),
        shipped("o1", EAST, {"1": 2}, at=3),                # before as_of: in the count
        received("r1", EAST, [("1", 1, A)]),
        inspected("r1", EAST, [("1", 1, "restock")], at=8),  # after as_of: added
        snapshot(A, EAST, 50, as_of=5),
    ]
    assert at(settle(events), A, EAST).on_hand == 51


# --- reservations ---------------------------------------------------------------------------


def test_order_created_with_node_reserves_at_that_node() -> None:
    model = settle([snapshot(A, EAST, 10, as_of=0), created("o1", [("1", A, 3, EAST)])])
    assert at(model, A, EAST) == figures(on_hand=10, reserved=3)
    assert model.channels[(A, "web")].available == 7


def test_order_created_without_node_is_unallocated_channel_demand() -> None:
    model = settle([snapshot(A, EAST, 10, as_of=0),
                    created("o1", [("1", A, 3, None), ("2", B, 1, None)], channel="web")])
    assert at(model, A, EAST) == figures(on_hand=10)
    assert model.channels[(A, "web")].available == 7
    assert model.channels[(A, "shop")].available == 0


def test_allocated_moves_reservation_from_channel_pool_to_node() -> None:
    model = settle([snapshot(A, EAST, 10, as_of=0), snapshot(A, STORE, 10, as_of=0),
                    created("o1", [("1", A, 3, None)], channel="shop"),
                    allocated("o1", {"1": STORE})])
    assert at(model, A, STORE) == figures(on_hand=10, reserved=3)
    assert model.channels[(A, "shop")].available == 10 - 3 - 1
    assert model.channels[(A, "web")].available == 10


def test_allocated_moves_reservation_from_node_to_node() -> None:
    model = settle([created("o1", [("1", A, 3, EAST)]), cancelled("o1", {"1": 1}),
                    allocated("o1", {"1": WEST})])
    assert at(model, A, EAST).reserved == 0
    assert at(model, A, WEST).reserved == 2


def test_allocated_to_the_node_it_is_at_changes_nothing() -> None:
    model = settle([created("o1", [("1", A, 3, EAST)]), allocated("o1", {"1": EAST})])
    assert at(model, A, EAST).reserved == 3


@pytest.mark.parametrize(("qty", "left"), [(1, 4), (5, 0), (9, 0)],
                         ids=["partial", "exact", "more-than-open"])
def test_cancel_releases_up_to_qty_of_the_open_reservation(qty: int, left: int) -> None:
    model = settle([created("o1", [("1", A, 5, EAST), ("2", A, 2, EAST)]),
                    cancelled("o1", {"1": qty})])
    assert at(model, A, EAST).reserved == left + 2


def test_cancel_without_lines_releases_every_open_reservation() -> None:
    model = settle([snapshot(B, EAST, 10, as_of=0),
                    created("o1", [("1", A, 5, EAST), ("2", B, 2, None), ("3", A, 1, None)]),
                    allocated("o1", {"3": WEST}), shipped("o1", EAST, {"1": 2}),
                    cancelled("o1")])
    assert [at(model, sku, node).reserved for sku in SKUS for node in NODES] == [0] * 6
    assert model.channels[(B, "web")].available == 10


def test_cancel_of_a_cancelled_line_releases_nothing_more() -> None:
    model = settle([created("o1", [("1", A, 5, EAST)]), cancelled("o1"),
                    cancelled("o1", {"1": 3}), created("o2", [("1", A, 2, EAST)])])
    assert at(model, A, EAST).reserved == 2


def test_shipped_partially_releases_and_takes_qty_off_on_hand() -> None:
    model = settle([snapshot(A, EAST, 10, as_of=0), created("o1", [("1", A, 5, EAST)]),
                    shipped("o1", EAST, {"1": 2})])
    assert at(model, A, EAST) == figures(on_hand=8, reserved=3)


def test_over_shipment_takes_full_qty_and_releases_only_what_is_open() -> None:
    model = settle([snapshot(A, EAST, 10, as_of=0), created("o1", [("1", A, 2, EAST)]),
                    created("o2", [("1", A, 1, EAST)]),
                    shipped("o1", EAST, {"1": 5})])
    assert at(model, A, EAST) == figures(on_hand=5, reserved=1)


def test_ship_of_unallocated_line_releases_channel_demand() -> None:
    model = settle([snapshot(A, EAST, 10, as_of=0), created("o1", [("1", A, 4, None)]),
                    shipped("o1", EAST, {"1": 3})])
    assert at(model, A, EAST) == figures(on_hand=7)
    assert model.channels[(A, "web")].available == 7 - 1


def test_ship_from_another_node_releases_at_the_reserved_node() -> None:
    model = settle([snapshot(A, EAST, 10, as_of=0), snapshot(A, WEST, 10, as_of=0),
                    created("o1", [("1", A, 3, EAST)]), shipped("o1", WEST, {"1": 3})])
    assert at(model, A, EAST) == figures(on_hand=10)
    assert at(model, A, WEST) == figures(on_hand=7)


# --- returns -------------------------------------------------------------------------------


def test_return_authorized_has_no_stock_effect() -> None:
    model = settle([snapshot(A, EAST, 10, as_of=0), authorized("r1", {"1": (A, 2)}, order_id="o1")])
    assert model.verdicts[-1] == APPLIED
    assert at(model, A, EAST) == figures(on_hand=10)


def test_return_received_puts_qty_into_quarantine_not_on_hand() -> None:
    model = settle([snapshot(A, EAST, 10, as_of=0), authorized("r1", {"1": (A, 2)}),
                    received("r1", EAST, [("1", 2, None)])])
    assert at(model, A, EAST) == figures(on_hand=10, quarantine=2)


def test_return_received_with_a_sku_needs_no_authorization() -> None:
    model = settle([
        received("r1", EAST, [("1", 2, A)]),                   # unknown RMA: made known
        authorized("r2", {"1": (A, 1)}),
        received("r2", WEST, [("1", 1, None), ("2", 3, B)]),   # line 2 never authorized
    ])
    assert model.verdicts == [APPLIED] * 3
    assert at(model, A, EAST).quarantine == 2
    assert at(model, A, WEST).quarantine == 1
    assert at(model, B, WEST).quarantine == 3


def test_return_received_sku_wins_over_the_authorized_one() -> None:
    # The warehouse counts what it holds: a line authorized as A but received as B is B.
    model = settle([authorized("r1", {"1": (A, 1)}), received("r1", EAST, [("1", 1, B)]),
                    inspected("r1", EAST, [("1", 1, "restock")])])
    assert at(model, B, EAST) == figures(on_hand=1)
    assert at(model, A, EAST) == figures()


@pytest.mark.parametrize(
    ("disposition", "on_hand"), [("restock", 11), ("damaged", 10), ("refurbish", 10)]
)
def test_return_inspected_takes_qty_out_of_quarantine(disposition: str, on_hand: int) -> None:
    model = settle([snapshot(A, EAST, 10, as_of=0), authorized("r1", {"1": (A, 3)}),
                    received("r1", EAST, [("1", 3, None)]),
                    inspected("r1", EAST, [("1", 1, disposition)])])
    assert at(model, A, EAST) == figures(on_hand=on_hand, quarantine=2)


def test_quarantine_is_never_below_zero() -> None:
    model = settle([
        received("r1", EAST, [("1", 1, A)]),
        inspected("r1", EAST, [("1", 3, "damaged")]),   # more than received
        inspected("r1", WEST, [("1", 1, "restock")]),   # at a node it never reached
        received("r2", STORE, [("1", 2, A)]),
        inspected("r2", STORE, [("1", 1, "damaged")]),
    ])
    assert at(model, A, EAST).quarantine == 0
    assert at(model, A, WEST) == figures(on_hand=1)
    assert at(model, A, STORE).quarantine == 1


def test_quarantine_counts_totals_whatever_the_order_across_rmas() -> None:
    # Inspected before another RMA's receipt: totals, not a running clamp (any interleaving).
    events = [received("r1", EAST, [("1", 1, A)]), inspected("r1", EAST, [("1", 3, "damaged")]),
              received("r2", EAST, [("1", 4, A)])]
    assert at(settle(events), A, EAST).quarantine == 2


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_quarantine_floors_the_total_whatever_the_order_of_the_rmas(
    order: tuple[int, ...]
) -> None:
    # Contract, "Clarifications": max(0, all received - all inspected) per (sku, node).
    rmas = [
        [received("r1", EAST, [("1", 2, A)]), inspected("r1", EAST, [("1", 5, "damaged")])],
        [received("r2", EAST, [("1", 4, A)]), inspected("r2", EAST, [("1", 1, "refurbish")])],
        [received("r3", EAST, [("1", 1, A)])],
    ]
    events = [event for k in order for event in rmas[k]]
    assert at(settle(events), A, EAST).quarantine == max(0, 2 + 4 + 1 - 5 - 1)


# --- safety stock -------------------------------------------------------------------------


def test_policy_with_the_latest_occurred_at_wins() -> None:
    model = settle([snapshot(A, EAST, 10, as_of=0), policy(A, EAST, 4, at=3, eid="p-2"),
                    policy(A, EAST, 1, at=2, eid="p-9"), policy(A, EAST, 2, at=3, eid="p-1")])
    assert at(model, A, EAST) == figures(on_hand=10, safety_stock=4)


def test_configured_default_safety_stock_without_a_policy() -> None:
    topology = msgspec.structs.replace(TOPOLOGY, safety_defaults={EAST: 3})
    model = settle([snapshot(A, EAST, 10, as_of=0), snapshot(B, EAST, 10, as_of=0),
                    policy(B, EAST, 0, at=1)], topology)
    assert at(model, A, EAST) == figures(on_hand=10, safety_stock=3)
    assert at(model, B, EAST) == figures(on_hand=10, safety_stock=0)
    assert at(model, A, WEST).safety_stock == 0


def test_configured_channels_and_node_defaults_become_the_topology() -> None:
    settings = Settings(
        channels=[ChannelSettings(name="web", nodes=[EAST, WEST], buffer=2,
                                  low_stock_threshold=5)],
        nodes={EAST: NodeSettings(safety_stock=3)},
    )
    topology = topology_of(settings)
    assert topology.channels == (
        ChannelSpec(name="web", nodes=(EAST, WEST), buffer=2, low_stock_threshold=5),
    )
    assert (topology.default_safety(EAST), topology.default_safety(WEST)) == (3, 0)


def test_node_available_is_on_hand_minus_reserved_minus_safety_never_below_zero() -> None:
    model = settle([snapshot(A, EAST, 10, as_of=0), policy(A, EAST, 2, at=0),
                    created("o1", [("1", A, 5, EAST)]), created("o2", [("1", A, 4, EAST)])])
    assert at(model, A, EAST) == NodeFigures(10, 9, 0, 2, 0)


# --- channels -------------------------------------------------------------------------------


def test_channel_available_sums_nodes_less_unallocated_demand_and_buffer() -> None:
    topology = Topology(channels=(
        ChannelSpec(name="web", nodes=(EAST, WEST), buffer=2, low_stock_threshold=0),
        ChannelSpec(name="shop", nodes=(WEST, STORE), buffer=0, low_stock_threshold=0),
    ))
    model = settle([
        snapshot(A, EAST, 10, as_of=0), snapshot(A, WEST, 5, as_of=0),
        snapshot(A, STORE, 100, as_of=0),
        policy(A, WEST, 1, at=0),                          # west: 5 - 1 = 4
        created("o1", [("1", A, 3, None)], channel="web"),
        created("o2", [("1", A, 1, None)], channel="shop"),
        created("o3", [("1", A, 9, None)], channel="kiosk"),  # not a configured channel
    ], topology)
    assert model.channels[(A, "web")].available == 10 + 4 - 3 - 2
    assert model.channels[(A, "shop")].available == 4 + 100 - 1


def test_channel_available_is_never_below_zero() -> None:
    model = settle([snapshot(A, STORE, 3, as_of=0),
                    created("o1", [("1", A, 5, None)], channel="shop")])
    assert model.channels[(A, "shop")].available == 0


def test_nodes_outside_a_channel_do_not_count_for_it() -> None:
    model = settle([snapshot(A, STORE, 30, as_of=0)])
    assert model.channels[(A, "web")].available == 0
    assert model.channels[(A, "shop")].available == 29


@pytest.mark.parametrize(
    ("on_hand", "available", "status"),
    [(0, 0, "out_of_stock"), (1, 0, "out_of_stock"), (2, 1, "low_stock"), (3, 2, "low_stock"),
     (4, 3, "in_stock")],
)
def test_status_bands(on_hand: int, available: int, status: str) -> None:
    # shop sells from the store with a buffer of 1 and a low-stock threshold of 2.
    model = settle([snapshot(A, STORE, on_hand, as_of=0)])
    assert model.channels[(A, "shop")] == ChannelFigures(available, status)


@pytest.mark.parametrize(
    ("available", "threshold", "status"),
    [(0, 0, "out_of_stock"), (1, 0, "in_stock"), (3, 3, "low_stock"), (4, 3, "in_stock"),
     (1, 3, "low_stock")],
)
def test_status_is_out_at_zero_low_up_to_the_threshold_else_in(
    available: int, threshold: int, status: str
) -> None:
    topology = Topology(channels=(
        ChannelSpec(name="web", nodes=(EAST,), low_stock_threshold=threshold),
        ChannelSpec(name="shop", nodes=(STORE,)),
    ))
    events = [snapshot(A, EAST, available, as_of=0)]
    assert settle(events, topology).channels[(A, "web")].status == status


# --- invalid events ---------------------------------------------------------------------------

_BASE = [snapshot(A, EAST, 10, as_of=0), created("o1", [("1", A, 3, EAST)]),
         authorized("r1", {"1": (A, 2)}), received("r1", EAST, [("1", 2, None)])]


@pytest.mark.parametrize(
    ("invalid", "reason"),
    [
        (allocated("o9", {"1": WEST}), Reason.UNKNOWN_ORDER),
        (cancelled("o9"), Reason.UNKNOWN_ORDER),
        (shipped("o9", EAST, {"1": 1}), Reason.UNKNOWN_ORDER),
        (created("o1", [("2", B, 1, WEST)]), Reason.ORDER_EXISTS),
        (allocated("o1", {"1": WEST, "7": WEST}), Reason.UNKNOWN_LINE),
        (cancelled("o1", {"1": 1, "7": 1}), Reason.UNKNOWN_LINE),
        (shipped("o1", EAST, {"1": 1, "7": 1}), Reason.UNKNOWN_LINE),
        (received("r9", EAST, [("1", 1, None)]), Reason.UNKNOWN_RMA),
        (received("r1", EAST, [("1", 1, None), ("7", 1, None)]), Reason.LINE_WITHOUT_SKU),
        (inspected("r9", EAST, [("1", 1, "restock")]), Reason.UNKNOWN_RMA),
        (inspected("r1", EAST, [("1", 1, "restock"), ("7", 1, "restock")]),
         Reason.UNKNOWN_LINE),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_invalid_events_are_rejected_and_change_nothing(invalid: Event, reason: str) -> None:
    before = MemoryWorker(TOPOLOGY)
    for event in _BASE:
        assert before.deliver(event) == APPLIED
    states = {group: state_encoder.encode(s) for group, s in before.states.items()}
    positions = {sku: state_encoder.encode(p) for sku, p in before.positions.items()}

    assert before.deliver(invalid) == reason
    assert {group: state_encoder.encode(s) for group, s in before.states.items()} == states
    assert {sku: state_encoder.encode(p) for sku, p in before.positions.items()} == positions
    assert settle([*_BASE, invalid]).verdicts[-1] == reason


def test_rejected_event_is_not_remembered_as_applied() -> None:
    early = allocated("o1", {"1": WEST}, eid="alloc-1")
    model = settle([early, created("o1", [("1", A, 3, EAST)]), early])
    assert model.verdicts == [Reason.UNKNOWN_ORDER, APPLIED, APPLIED]
    assert at(model, A, WEST).reserved == 3


# --- idempotency ------------------------------------------------------------------------------


def test_duplicate_stock_event_has_no_further_effect() -> None:
    delta = adjusted(A, EAST, 5, at=1, eid="wms-1", source="wms")
    other_source = adjusted(A, EAST, 5, at=1, eid="wms-1", source="erp")
    model = settle([delta, delta, other_source, delta])
    assert model.verdicts == [APPLIED, DUPLICATE, APPLIED, DUPLICATE]
    assert at(model, A, EAST).on_hand == 10


def test_duplicate_order_event_has_no_further_effect() -> None:
    order = created("o1", [("1", A, 3, EAST)], eid="c-1")
    ship = shipped("o1", EAST, {"1": 1}, eid="s-1")
    model = settle([snapshot(A, EAST, 10, as_of=0), order, ship, order, ship])
    assert model.verdicts[1:] == [APPLIED, APPLIED, DUPLICATE, DUPLICATE]
    assert at(model, A, EAST) == figures(on_hand=9, reserved=2)


def test_duplicate_return_event_has_no_further_effect() -> None:
    receipt = received("r1", EAST, [("1", 2, A)], eid="rcv-1")
    model = settle([receipt, receipt, inspected("r1", EAST, [("1", 1, "damaged")]), receipt])
    assert model.verdicts == [APPLIED, DUPLICATE, APPLIED, DUPLICATE]
    assert at(model, A, EAST).quarantine == 1


@pytest.mark.parametrize(("later_ms", "applies"), [(WINDOW_MS - 1, False), (WINDOW_MS, True)],
                         ids=["inside-window", "after-window"])
def test_duplicate_after_the_window_applies_again(later_ms: int, applies: bool) -> None:
    worker = MemoryWorker(TOPOLOGY)
    delta = adjusted(A, EAST, 5, at=1)
    ship = shipped("o1", EAST, {"1": 1})
    for event in (created("o1", [("1", A, 3, EAST)]), delta, ship):
        assert worker.deliver(event) == APPLIED
    worker.now_ms += later_ms
    expected = APPLIED if applies else DUPLICATE
    assert [worker.deliver(delta), worker.deliver(ship)] == [expected, expected]
    view = worker.model(SKUS, NODES, []).nodes[(A, EAST)]
    assert view.on_hand == (5 - 1) * (2 if applies else 1)


def test_second_order_created_inside_or_after_window_is_never_applied_twice() -> None:
    order = created("o1", [("1", A, 3, EAST)])
    worker = MemoryWorker(TOPOLOGY)
    assert worker.deliver(order) == APPLIED
    worker.now_ms += WINDOW_MS
    assert worker.deliver(order) == Reason.ORDER_EXISTS
    assert worker.model(SKUS, NODES, []).nodes[(A, EAST)].reserved == 3


# --- watermarks -------------------------------------------------------------------------------


def _translated(event: Event, state: Any, where: SourceRef) -> tuple[Translated, Any]:
    outcome, state = translate(event, state, where, NOW_MS, WINDOW_MS)
    assert isinstance(outcome, Translated)
    return outcome, state


def test_resent_effects_are_skipped_by_the_watermark() -> None:
    first, state = _translated(created("o1", [("1", A, 3, EAST), ("2", A, 1, None)]), None,
                               ref(4))
    second, _ = _translated(shipped("o1", EAST, {"1": 3}), state, ref(9))
    effects = first.effects + second.effects
    position = Position(sku=A)
    assert apply_effects(position, effects, NOW_MS, WINDOW_MS) == (4, 0)
    applied = copy_position(position)
    # A translator that died before committing sends them again, whole or from the middle.
    assert apply_effects(position, effects, NOW_MS, WINDOW_MS) == (0, 4)
    assert apply_effects(position, effects[2:], NOW_MS, WINDOW_MS) == (0, 2)
    assert position == applied


def test_watermarks_are_per_source_partition() -> None:
    position = Position(sku=A)
    high, _ = _translated(adjusted(A, EAST, 1, at=1), None, ref(50, kind="stock", partition=0))
    low, _ = _translated(adjusted(A, EAST, 2, at=1), None, ref(3, kind="stock", partition=1))
    assert apply_effects(position, high.effects + low.effects, NOW_MS, WINDOW_MS) == (2, 0)
    other_topic = msgspec.structs.replace(low.effects[0], src="stocksync-b.stock.v1/1")
    assert apply_effects(position, [other_topic], NOW_MS, WINDOW_MS) == (0, 1)  # same event_id


def test_version_is_bumped_once_per_applied_batch() -> None:
    outcome, _ = _translated(created("o1", [("1", A, 3, EAST), ("2", A, 1, WEST)]), None, ref(1))
    position = Position(sku=A)
    apply_effects(position, outcome.effects, NOW_MS, WINDOW_MS)
    apply_effects(position, outcome.effects, NOW_MS + 5, WINDOW_MS)
    assert (position.version, position.updated_at) == (1, NOW_MS)


@pytest.mark.parametrize(
    ("where", "skipped"),
    [(ref(7), True), (ref(6), True), (ref(7, index=1), False), (ref(8), False),
     (ref(7, partition=1), False)],
    ids=["same-offset", "lower-offset", "later-index", "higher-offset", "other-partition"],
)
def test_replay_at_or_below_the_order_watermark_is_skipped(where: SourceRef,
                                                            skipped: bool) -> None:
    _, state = _translated(created("o1", [("1", A, 5, EAST)]), None, ref(3))
    _, state = _translated(cancelled("o1", {"1": 1}, eid="cancel-1"), state, ref(7))
    kept = state_encoder.encode(state)
    replay = cancelled("o1", {"1": 1}, eid="cancel-2")  # a new id: only the watermark can tell
    outcome, state = translate(replay, state, where, NOW_MS, WINDOW_MS)
    assert isinstance(outcome, Skipped) is skipped
    assert (state_encoder.encode(state) == kept) is skipped


def test_redelivered_stock_event_is_skipped_by_the_watermark() -> None:
    worker = MemoryWorker(TOPOLOGY)
    delta = adjusted(A, EAST, 5, at=1)
    where = worker.record(delta)
    assert worker.deliver(delta, where) == APPLIED
    assert worker.deliver(delta, where) == DUPLICATE
    assert worker.positions[A].nodes[EAST].changes == [(worker.sent[0].at, 5)]


def test_redelivered_stock_event_after_the_window_is_still_skipped_by_the_watermark() -> None:
    # After a long outage a consumer may restart from an offset older than the window:
    # the (source, event_id) entry has expired, the watermark has not.
    worker = MemoryWorker(TOPOLOGY)
    delta = adjusted(A, EAST, 5, at=1)
    where = worker.record(delta)
    assert worker.deliver(delta, where) == APPLIED
    worker.now_ms += 3 * WINDOW_MS
    assert worker.deliver(delta, where) == DUPLICATE
    assert worker.model(SKUS, NODES, []).nodes[(A, EAST)].on_hand == 5


def test_redelivered_order_event_after_the_window_is_still_skipped_by_the_watermark() -> None:
    worker = MemoryWorker(TOPOLOGY)
    ship = shipped("o1", EAST, {"1": 1})
    assert worker.deliver(created("o1", [("1", A, 3, EAST)])) == APPLIED
    where = worker.record(ship)
    assert worker.deliver(ship, where) == APPLIED
    worker.now_ms += 3 * WINDOW_MS
    assert worker.deliver(ship, where) == DUPLICATE
    assert worker.model(SKUS, NODES, []).nodes[(A, EAST)] == NodeFigures(-1, 2, 0, 0, 0)


@pytest.mark.parametrize(("on_hand", "reserved", "oversold"), [(3, 4, True), (4, 4, False)])
def test_oversold_is_on_hand_below_reserved(on_hand: int, reserved: int, oversold: bool) -> None:
    worker = MemoryWorker(TOPOLOGY)
    for event in (snapshot(A, EAST, on_hand, as_of=0), created("o1", [("1", A, reserved, EAST)])):
        worker.deliver(event)
    assert is_oversold(node_view(worker.positions[A], EAST, TOPOLOGY)) is oversold


def test_largest_quantities_survive_the_stored_encodings() -> None:
    # Every number an event may carry, and the sums the model keeps of many of them, must fit
    # the msgpack the effects topic and the store use: an overflow there would stop the batch.
    big = MAX_QUANTITY
    lines = [(str(i), A, big, EAST if i % 2 else None) for i in range(MAX_LINES)]
    events: list[Event] = [
        snapshot(A, EAST, big, as_of=0), adjusted(A, EAST, big, at=1),
        adjusted(A, EAST, -big, at=2), policy(A, EAST, big, at=1),
        *(created(f"o{n}", lines) for n in range(8)),
        received("r1", EAST, [(str(i), big, A) for i in range(MAX_LINES)]),
        shipped("o0", WEST, {str(i): big for i in range(MAX_LINES)}),
    ]
    worker = MemoryWorker(TOPOLOGY)
    assert [worker.deliver(event) for event in events] == [APPLIED] * len(events)
    batch = EffectBatch(worker.sent)
    assert batch_decoder.decode(batch_encoder.encode(batch)) == batch
    position = worker.positions[A]
    assert position_decoder.decode(state_encoder.encode(position)) == position
    assert position.nodes[EAST].reserved == 7 * (MAX_LINES // 2) * big  # o0 shipped


# --- placement ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "kind", "key", "bulk", "reason"),
    [
        (adjusted(A, EAST, 1, at=1), "stock", A, False, None),
        (adjusted(A, EAST, 1, at=1), "stock", B, True, None),   # stock bulk: any key
        (adjusted(A, EAST, 1, at=1), "stock", None, True, None),
        (adjusted(A, EAST, 1, at=1), "orders", A, False, Reason.WRONG_TOPIC),
        (created("o1", [("1", A, 1, None)]), "stock", "o1", False, Reason.WRONG_TOPIC),
        (created("o1", [("1", A, 1, None)]), "returns", "o1", False, Reason.WRONG_TOPIC),
        (received("r1", EAST, [("1", 1, A)]), "orders", "r1", False, Reason.WRONG_TOPIC),
        (created("o1", [("1", A, 1, None)]), "orders", "o1", True, None),
        (created("o1", [("1", A, 1, None)]), "orders", "o2", True, Reason.KEY_MISMATCH),
        (created("o1", [("1", A, 1, None)]), "orders", None, True, Reason.KEY_MISMATCH),
        (received("r1", EAST, [("1", 1, A)]), "returns", "r2", True, Reason.KEY_MISMATCH),
        (received("r1", EAST, [("1", 1, A)]), "returns", "r1", True, None),
        # The contract constrains keys of bulk messages only.
        (created("o1", [("1", A, 1, None)]), "orders", "o2", False, None),
    ],
)
def test_check_placement(event: Event, kind: str, key: str | None, bulk: bool,
                         reason: str | None) -> None:
    outcome = check_placement(event, kind, key, bulk)
    assert (outcome.reason if isinstance(outcome, Rejected) else None) == reason


def test_order_state_round_trips_through_its_stored_encoding() -> None:
    _, state = _translated(created("o1", [("1", A, 5, None)]), None, ref(3))
    assert msgspec.msgpack.decode(state_encoder.encode(state), type=OrderState) == state


@given(st.integers(min_value=-(10**12), max_value=4 * 10**12))
def test_format_millis_is_rfc3339_utc_with_milliseconds(ms: int) -> None:
    # Cached by the second: every millisecond of a second still gets its own text.
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert format_millis(ms) == moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert format_millis(ms + 1) != format_millis(ms)
