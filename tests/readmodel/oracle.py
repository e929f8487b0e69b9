"""A brute-force model of the read model, written from the contract text alone.

``contracts/events-v1.md`` ("Semantics") says what the read model must equal.
This module computes exactly that, as naively as possible, from the events
each key received, in order: it keeps no positions, no effects and no
watermarks. It replays every order and RMA to its final lines, collects every
snapshot, policy and physical change, and only at the end evaluates the
contract's formulas. It shares nothing with ``stocksync.readmodel.core`` but
the event Structs and the reason codes, so the property tests can hold the
core to it.

Readings of the contract taken here (each one also noted in the tests):

* Snapshot and policy ties (contract, "Clarifications"): among snapshots with
  the same latest ``as_of`` the one with the greatest (``source``,
  ``event_id``) wins, whatever the order received; policies with the same
  latest ``occurred_at`` follow the same rule.
* Times are instants at full precision: read here as one integer of
  nanoseconds since the epoch (the core keeps a (seconds, nanoseconds) pair),
  by ``datetime.fromisoformat`` for the whole seconds and the digits of the
  fraction by hand.
* An event is valid or invalid as a whole, judged against its key's state
  before it; an invalid event changes nothing and is not remembered for
  de-duplication (it was never applied).
* A second copy of an applied event (same ``source`` and ``event_id``) is a
  duplicate even where it would otherwise be invalid (``order.created`` again).
  Event ids are unique per source, so a second copy travels under the same key
  as the first; the window is taken as infinite here.
* The sku of an RMA line is the one it was last received with, else the one
  it was last authorized with; ``return.received`` may leave ``sku`` out for
  any line whose sku is known that way.
* Quarantine is clamped once, on the totals: max(0, received - inspected),
  whatever the order of the RMAs.
* The idempotency key is the pair (``source``, ``event_id``): a tuple here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from stocksync.codecs.events import (
    Event,
    OrderAllocated,
    OrderCancelled,
    OrderCreated,
    OrderShipped,
    ReturnAuthorized,
    ReturnInspected,
    ReturnReceived,
    StockAdjusted,
    StockPolicy,
    StockSnapshot,
)
from stocksync.codecs.messages import Reason
from stocksync.readmodel.core import Topology

__all__ = [
    "APPLIED",
    "DUPLICATE",
    "ChannelFigures",
    "HoldsOracle",
    "Model",
    "NodeFigures",
    "expected_model",
    "key_group",
    "nanoseconds",
]

#: Verdict of an event that changed the model (or would have, had it been first).
APPLIED = "applied"
#: Verdict of a second copy of an applied (``source``, ``event_id``).
DUPLICATE = "duplicate"


@dataclass(frozen=True)
class NodeFigures:
    """The contract's five quantities of one SKU at one node."""

    on_hand: int
    reserved: int
    quarantine: int
    safety_stock: int
    available: int


@dataclass(frozen=True)
class ChannelFigures:
    """What one channel may sell of one SKU, and its status band."""

    available: int
    status: str


@dataclass
class Model:
    """The read model and the verdict on every event, in the order they were given."""

    verdicts: list[str]
    nodes: dict[tuple[str, str], NodeFigures]
    channels: dict[tuple[str, str], ChannelFigures]


def key_group(event: Event) -> tuple[str, str]:
    """The topic family and key an event travels under: its order of arrival matters only within."""
    if isinstance(event, StockSnapshot | StockAdjusted | StockPolicy):
        return ("stock", event.sku)
    if isinstance(event, OrderCreated | OrderAllocated | OrderCancelled | OrderShipped):
        return ("order", event.order_id)
    assert isinstance(event, ReturnAuthorized | ReturnReceived | ReturnInspected)
    return ("return", event.rma_id)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def nanoseconds(stamp: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (digits past the ninth dropped)."""
    body, fraction = stamp, ""
    if "." in stamp:
        head, rest = stamp.split(".", 1)
        digits = len(rest) - len(rest.lstrip("0123456789"))
        body, fraction = head + rest[digits:], rest[:digits]
    body = body[:10] + "T" + body[11:]
    if body[-1] in "Zz":
        body = body[:-1] + "+00:00"
    shift = 0
    if body.startswith("0000"):  # a local year 0 that is 0001 in UTC: 400 years are whole days
        body, shift = "0400" + body[4:], 146_097 * 86_400
    whole = (datetime.fromisoformat(body) - _EPOCH) // timedelta(seconds=1) - shift
    return whole * 1_000_000_000 + int((fraction + "000000000")[:9])


#: A time-stamped fact, who said it (``source``, ``event_id``), and what it says.
Fact = tuple[int, tuple[str, str], int]


@dataclass
class _Facts:
    """Everything the valid events said, before any formula is evaluated."""

    #: (sku, node) -> [(as_of, pair, on_hand)] in order received.
    snapshots: dict[tuple[str, str], list[Fact]] = field(
        default_factory=lambda: defaultdict(list)
    )
    #: (sku, node) -> [(occurred_at, pair, safety_stock)] in order received.
    policies: dict[tuple[str, str], list[Fact]] = field(
        default_factory=lambda: defaultdict(list)
    )
    #: (sku, node) -> [(occurred_at ns, signed change of on_hand)].
    changes: dict[tuple[str, str], list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    #: (sku, node) -> quantities received into / inspected out of quarantine.
    received: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    inspected: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: order_id -> {"channel": str, "lines": {line_id: {"sku", "open", "node"}}}
    orders: dict[str, dict[str, object]] = field(default_factory=dict)


# --- one key at a time ------------------------------------------------------------------


def _stock(event: Event, facts: _Facts) -> str:
    said_by = (event.source, event.event_id)
    if isinstance(event, StockSnapshot):
        facts.snapshots[(event.sku, event.node)].append(
            (nanoseconds(event.as_of), said_by, event.on_hand)
        )
    elif isinstance(event, StockAdjusted):
        facts.changes[(event.sku, event.node)].append(
            (nanoseconds(event.occurred_at), event.delta)
        )
    else:
        assert isinstance(event, StockPolicy)
        facts.policies[(event.sku, event.node)].append(
            (nanoseconds(event.occurred_at), said_by, event.safety_stock)
        )
    return APPLIED


def _order(event: Event, facts: _Facts) -> str:
    order_id = event.order_id  # type: ignore[union-attr]
    order = facts.orders.get(order_id)
    if isinstance(event, OrderCreated):
        if order is not None:
            return Reason.ORDER_EXISTS
        facts.orders[order_id] = {
            "channel": event.channel,
            "lines": {
                line.line_id: {"sku": line.sku, "open": line.qty, "node": line.node}
                for line in event.lines
            },
        }
        return APPLIED
    if order is None:
        return Reason.UNKNOWN_ORDER
    lines: dict[str, dict[str, object]] = order["lines"]  # type: ignore[assignment]
    named = [line.line_id for line in event.lines or []]  # type: ignore[union-attr]
    if any(line_id not in lines for line_id in named):
        return Reason.UNKNOWN_LINE
    if isinstance(event, OrderAllocated):
        for alloc in event.lines:
            lines[alloc.line_id]["node"] = alloc.node
    elif isinstance(event, OrderCancelled):
        if event.lines is None:
            for line in lines.values():
                line["open"] = 0
        else:
            for cancel in event.lines:
                line = lines[cancel.line_id]
                line["open"] = max(0, line["open"] - cancel.qty)  # type: ignore[operator]
    else:
        assert isinstance(event, OrderShipped)
        for ship in event.lines:
            line = lines[ship.line_id]
            line["open"] = max(0, line["open"] - ship.qty)  # type: ignore[operator]
            facts.changes[(line["sku"], event.node)].append(  # type: ignore[index]
                (nanoseconds(event.occurred_at), -ship.qty)
            )
    return APPLIED


def _rma(event: Event, rma: dict[str, dict[str, str | None]] | None, facts: _Facts) -> tuple[
    str, dict[str, dict[str, str | None]] | None
]:
    """One return event against the RMA's lines ({line_id: {"authorized", "received"}})."""

    def sku_of(line_id: str) -> str | None:
        line = (rma or {}).get(line_id)
        if line is None:
            return None
        return line["received"] or line["authorized"]

    if isinstance(event, ReturnAuthorized):
        rma = rma if rma is not None else {}
        for auth in event.lines:
            rma.setdefault(auth.line_id, {"authorized": None, "received": None})
            rma[auth.line_id]["authorized"] = auth.sku
        return APPLIED, rma
    if isinstance(event, ReturnReceived):
        skus = [recv.sku or sku_of(recv.line_id) for recv in event.lines]
        if None in skus:
            return (Reason.UNKNOWN_RMA if rma is None else Reason.LINE_WITHOUT_SKU), rma
        rma = rma if rma is not None else {}
        for recv, sku in zip(event.lines, skus, strict=True):
            assert sku is not None
            rma.setdefault(recv.line_id, {"authorized": None, "received": None})
            rma[recv.line_id]["received"] = sku
            facts.received[(sku, event.node)] += recv.qty
        return APPLIED, rma
    assert isinstance(event, ReturnInspected)
    if rma is None:
        return Reason.UNKNOWN_RMA, rma
    if any(sku_of(insp.line_id) is None for insp in event.lines):
        return Reason.UNKNOWN_LINE, rma
    for insp in event.lines:
        sku = sku_of(insp.line_id)
        assert sku is not None
        facts.inspected[(sku, event.node)] += insp.qty
        if insp.disposition == "restock":
            facts.changes[(sku, event.node)].append((nanoseconds(event.occurred_at), insp.qty))
    return APPLIED, rma


# --- the formulas ----------------------------------------------------------------------


def _winner(entries: list[Fact]) -> Fact | None:
    """The fact with the latest time; among equals, the one with the greatest pair."""
    if not entries:
        return None
    latest = max(when for when, _, _ in entries)
    return max((entry for entry in entries if entry[0] == latest), key=lambda e: e[1])


def _on_hand(facts: _Facts, sku: str, node: str) -> int:
    changes = facts.changes.get((sku, node), [])
    snapshot = _winner(facts.snapshots.get((sku, node), []))
    if snapshot is None:
        return sum(delta for _, delta in changes)
    as_of, _, count = snapshot
    return count + sum(delta for when, delta in changes if when > as_of)


def _status(available: int, threshold: int) -> str:
    if available == 0:
        return "out_of_stock"
    if available <= threshold:
        return "low_stock"
    return "in_stock"


def expected_model(
    events: Sequence[Event],
    topology: Topology,
    skus: Sequence[str],
    nodes: Sequence[str],
) -> Model:
    """The read model the contract asks for after ``events`` (in arrival order), and verdicts.

    ``skus`` and ``nodes`` name the (sku, node) pairs to report; every pair an
    event touched is reported too.
    """
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for position, event in enumerate(events):
        by_key[key_group(event)].append(position)

    facts = _Facts()
    verdicts = [""] * len(events)
    for (family, _key), positions in by_key.items():
        applied: set[tuple[str, str]] = set()
        rma: dict[str, dict[str, str | None]] | None = None
        for position in positions:
            event = events[position]
            ident = (event.source, event.event_id)
            if ident in applied:
                verdicts[position] = DUPLICATE
                continue
            if family == "stock":
                verdict = _stock(event, facts)
            elif family == "order":
                verdict = _order(event, facts)
            else:
                verdict, rma = _rma(event, rma, facts)
            verdicts[position] = verdict
            if verdict == APPLIED:
                applied.add(ident)

    reserved: dict[tuple[str, str], int] = defaultdict(int)
    demand: dict[tuple[str, str], int] = defaultdict(int)
    for order in facts.orders.values():
        for line in order["lines"].values():  # type: ignore[attr-defined]
            if line["node"] is None:
                demand[(line["sku"], order["channel"])] += line["open"]
            else:
                reserved[(line["sku"], line["node"])] += line["open"]

    pairs = {(sku, node) for sku in skus for node in nodes}
    for table in (facts.snapshots, facts.policies, facts.changes, facts.received,
                  facts.inspected, reserved):
        pairs.update(table)
    all_skus = sorted({sku for sku, _ in pairs} | {sku for sku, _ in demand})
    for spec in topology.channels:
        pairs.update((sku, node) for sku in all_skus for node in spec.nodes)

    figures: dict[tuple[str, str], NodeFigures] = {}
    for sku, node in sorted(pairs):
        on_hand = _on_hand(facts, sku, node)
        policy = _winner(facts.policies.get((sku, node), []))
        safety = policy[2] if policy is not None else topology.safety_defaults.get(node, 0)
        quarantine = max(0, facts.received.get((sku, node), 0)
                         - facts.inspected.get((sku, node), 0))
        held = reserved.get((sku, node), 0)
        figures[(sku, node)] = NodeFigures(
            on_hand=on_hand,
            reserved=held,
            quarantine=quarantine,
            safety_stock=safety,
            available=max(0, on_hand - held - safety),
        )

    channels: dict[tuple[str, str], ChannelFigures] = {}
    for sku in all_skus:
        for spec in topology.channels:
            total = sum(figures[(sku, node)].available for node in spec.nodes)
            available = max(0, total - demand.get((sku, spec.name), 0) - spec.buffer)
            channels[(sku, spec.name)] = ChannelFigures(
                available, _status(available, spec.low_stock_threshold)
            )
    return Model(verdicts=verdicts, nodes=figures, channels=channels)


# --- checkout holds (api-v1, "Holds") ---------------------------------------------------


@dataclass
class _OracleHold:
    channel: str
    requested: dict[str, int]
    held: dict[str, int]
    expires_ms: int
    ended: str | None = None  # "released" or "converted"


@dataclass
class HoldsOracle:
    """Holds as the contract states them, over pre-hold channel figures, with no cleverness.

    ``pre`` is the channel's available figure before holds (what the event
    contract's formula gives), per (sku, channel). Every question scans every
    hold ever made.
    """

    pre: dict[tuple[str, str], int]
    holds: dict[str, _OracleHold] = field(default_factory=dict)

    def held(self, sku: str, channel: str, now_ms: int) -> int:
        """Quantity held on ``channel`` of ``sku`` by holds active at ``now_ms``."""
        return sum(
            hold.held.get(sku, 0)
            for hold in self.holds.values()
            if hold.channel == channel and hold.ended is None and hold.expires_ms > now_ms
        )

    def available(self, sku: str, channel: str, now_ms: int) -> int:
        """max(0, pre-hold available - held by active holds)."""
        return max(0, self.pre.get((sku, channel), 0) - self.held(sku, channel, now_ms))

    def request(
        self,
        hold_id: str,
        channel: str,
        lines: dict[str, int],
        *,
        partial: bool,
        now_ms: int,
        ttl_ms: int,
    ) -> tuple[str, dict[str, int]]:
        """``("created"|"exists"|"conflict"|"short", held per SKU)`` of one POST."""
        known = self.holds.get(hold_id)
        if known is not None:
            if known.channel != channel or known.requested != lines:
                return "conflict", {}
            return "exists", dict(known.held)
        available = {sku: self.available(sku, channel, now_ms) for sku in lines}
        if not partial and any(qty > available[sku] for sku, qty in lines.items()):
            return "short", available
        held = {sku: min(qty, available[sku]) for sku, qty in lines.items()}
        self.holds[hold_id] = _OracleHold(channel, dict(lines), held, now_ms + ttl_ms)
        return "created", held

    def end(self, hold_id: str, how: str, now_ms: int) -> bool:
        """Release or convert a hold if it is active; tell whether it was."""
        hold = self.holds.get(hold_id)
        if hold is None or hold.ended is not None or hold.expires_ms <= now_ms:
            return False
        hold.ended = how
        return True
