"""Short builders for events, and Hypothesis strategies for random scenarios.

Times are minutes after :data:`T0`; a handful of possible minutes makes
colliding and out-of-order ``as_of`` and ``occurred_at`` common. Scenarios
draw orders, RMAs and lines from small pools, so unknown orders, unknown
lines, second ``order.created`` and exact producer copies happen often.

The contract's clarifications each have a case here: instants that differ by
a nanosecond or 300 ns (below msgspec's microseconds), written in other zones
or with a lowercase ``z``, and the first and last instants of the years
0001-9999; equal ``as_of`` and ``occurred_at`` from different (``source``,
``event_id``) pairs; event ids holding ``\x1f`` and "twins", different events
whose pair joined with ``\x1f`` would be the same string; quantities at the
±10^9 limits; receipts and inspections spread over RMAs at shared nodes.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import TypeVar

import msgspec
from hypothesis import strategies as st

from stocksync.codecs.events import (
    AllocatedLine,
    AuthorizedLine,
    CreatedLine,
    Event,
    InspectedLine,
    OrderAllocated,
    OrderCancelled,
    OrderCreated,
    OrderShipped,
    QtyLine,
    ReceivedLine,
    ReturnAuthorized,
    ReturnInspected,
    ReturnReceived,
    StockAdjusted,
    StockPolicy,
    StockSnapshot,
)
from stocksync.readmodel.core import ChannelSpec, Topology

__all__ = [
    "CHANNELS",
    "NODES",
    "POISONS",
    "SKUS",
    "T0",
    "adjusted",
    "allocated",
    "authorized",
    "cancelled",
    "created",
    "inspected",
    "interleave",
    "keyed_scenarios",
    "poisoned",
    "poisons",
    "policy",
    "received",
    "scenarios",
    "shipped",
    "snapshot",
    "t",
    "text",
    "topologies",
    "twin_of",
]

SKUS = ("SKU-A", "SKU-B", "SKU-C")
NODES = ("dc-east", "dc-west", "store-1")
CHANNELS = ("web", "shop")
ORDERS = ("o1", "o2", "o3")
RMAS = ("r1", "r2")
LINE_IDS = ("1", "2", "3")
SOURCES = ("erp", "wms", "shop")
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
#: The largest quantity an event may carry.
BIG = 1_000_000_000
#: The same instants seen from another zone: compared as UTC instants, they must not differ.
PLUS_TWO = timezone(timedelta(hours=2))

_ids = itertools.count(1)
T = TypeVar("T")


def t(minutes: int) -> datetime:
    """``minutes`` after :data:`T0`."""
    return T0 + timedelta(minutes=minutes)


Moment = int | datetime | str


def text(moment: Moment) -> str:
    """RFC 3339 text of minutes after T0, of an aware datetime, or a timestamp as written."""
    if isinstance(moment, str):
        return moment
    return (t(moment) if isinstance(moment, int) else moment).isoformat()


def _envelope(at: Moment, eid: str | None, source: str) -> dict[str, object]:
    return {
        "schema": 1,
        "event_id": eid or f"ev-{next(_ids)}",
        "occurred_at": text(at),
        "source": source,
    }


def snapshot(
    sku: str, node: str, on_hand: int, as_of: Moment, *, at: Moment | None = None,
    eid: str | None = None, source: str = "erp",
) -> StockSnapshot:
    """A ``stock.snapshot``; ``as_of`` and ``at`` in minutes after T0 (or datetimes, or text)."""
    moment = text(as_of)
    return StockSnapshot(
        **_envelope(at if at is not None else moment, eid, source),  # type: ignore[arg-type]
        sku=sku, node=node, on_hand=on_hand, as_of=moment,
    )


def adjusted(
    sku: str, node: str, delta: int, at: Moment, *, eid: str | None = None,
    source: str = "wms", reason: str = "correction",
) -> StockAdjusted:
    """A ``stock.adjusted`` that happened at ``at``."""
    return StockAdjusted(
        **_envelope(at, eid, source),  # type: ignore[arg-type]
        sku=sku, node=node, delta=delta, reason=reason,  # type: ignore[arg-type]
    )


def policy(
    sku: str, node: str, safety_stock: int, at: Moment, *, eid: str | None = None,
    source: str = "erp",
) -> StockPolicy:
    """A ``stock.policy`` set at ``at``."""
    return StockPolicy(
        **_envelope(at, eid, source),  # type: ignore[arg-type]
        sku=sku, node=node, safety_stock=safety_stock,
    )


def created(
    order_id: str, lines: list[tuple[str, str, int, str | None]], *, channel: str = "web",
    at: Moment = 10, eid: str | None = None, source: str = "shop",
) -> OrderCreated:
    """An ``order.created``; lines are ``(line_id, sku, qty, node or None)``."""
    return OrderCreated(
        **_envelope(at, eid, source),  # type: ignore[arg-type]
        order_id=order_id, channel=channel,
        lines=[CreatedLine(line_id=i, sku=s, qty=q, node=n) for i, s, q, n in lines],
    )


def allocated(
    order_id: str, lines: dict[str, str], *, at: Moment = 11, eid: str | None = None,
    source: str = "oms",
) -> OrderAllocated:
    """An ``order.allocated``; lines map line_id to node."""
    return OrderAllocated(
        **_envelope(at, eid, source),  # type: ignore[arg-type]
        order_id=order_id,
        lines=[AllocatedLine(line_id=i, node=n) for i, n in lines.items()],
    )


def cancelled(
    order_id: str, lines: dict[str, int] | None = None, *, at: Moment = 12,
    eid: str | None = None, source: str = "shop",
) -> OrderCancelled:
    """An ``order.cancelled``; lines map line_id to qty, None cancels everything."""
    return OrderCancelled(
        **_envelope(at, eid, source),  # type: ignore[arg-type]
        order_id=order_id,
        lines=None if lines is None else [QtyLine(line_id=i, qty=q) for i, q in lines.items()],
    )


def shipped(
    order_id: str, node: str, lines: dict[str, int], *, at: Moment = 13,
    eid: str | None = None, source: str = "wms", shipment_id: str = "shp-1",
) -> OrderShipped:
    """An ``order.shipped`` from ``node``; lines map line_id to qty."""
    return OrderShipped(
        **_envelope(at, eid, source),  # type: ignore[arg-type]
        order_id=order_id, shipment_id=shipment_id, node=node,
        lines=[QtyLine(line_id=i, qty=q) for i, q in lines.items()],
    )


def authorized(
    rma_id: str, lines: dict[str, tuple[str, int]], *, order_id: str | None = None,
    at: Moment = 20, eid: str | None = None, source: str = "returns",
) -> ReturnAuthorized:
    """A ``return.authorized``; lines map line_id to (sku, qty)."""
    return ReturnAuthorized(
        **_envelope(at, eid, source),  # type: ignore[arg-type]
        rma_id=rma_id, order_id=order_id,
        lines=[AuthorizedLine(line_id=i, sku=s, qty=q) for i, (s, q) in lines.items()],
    )


def received(
    rma_id: str, node: str, lines: list[tuple[str, int, str | None]], *,
    at: Moment = 21, eid: str | None = None, source: str = "returns",
) -> ReturnReceived:
    """A ``return.received`` at ``node``; lines are ``(line_id, qty, sku or None)``."""
    return ReturnReceived(
        **_envelope(at, eid, source),  # type: ignore[arg-type]
        rma_id=rma_id, node=node,
        lines=[ReceivedLine(line_id=i, qty=q, sku=s) for i, q, s in lines],
    )


def inspected(
    rma_id: str, node: str, lines: list[tuple[str, int, str]], *, at: Moment = 22,
    eid: str | None = None, source: str = "returns",
) -> ReturnInspected:
    """A ``return.inspected`` at ``node``; lines are ``(line_id, qty, disposition)``."""
    return ReturnInspected(
        **_envelope(at, eid, source),  # type: ignore[arg-type]
        rma_id=rma_id, node=node,
        lines=[InspectedLine(line_id=i, qty=q, disposition=d) for i, q, d in lines],  # type: ignore[arg-type]
    )


# --- strategies ------------------------------------------------------------------------


_DETAIL = st.integers(0, 2**96)
_STOCK_EVENTS = st.integers(0, 12)
_LIFECYCLE_STEPS = st.integers(0, 5)
_COPIES = st.integers(0, 3)
_TWINS = st.integers(0, 2)


class _Digits:
    """Choices read off one drawn integer, digit by digit (0 is always the simplest choice).

    Drawing each field separately makes a scenario cost hundreds of draws; one
    integer per event keeps generation cheap while shrinking still removes
    events and simplifies the survivors towards their first options.
    """

    def __init__(self, number: int) -> None:
        self.number = number

    def pick(self, options: Sequence[T]) -> T:
        self.number, digit = divmod(self.number, len(options))
        return options[digit]

    def between(self, low: int, high: int) -> int:
        return self.pick(range(low, high + 1))

    def chance(self, percent: int) -> bool:
        """True ``percent`` times in a hundred (False is the simpler choice)."""
        return self.pick(range(100)) >= 100 - percent

    def moment(self) -> str:
        """One of a few instants, a nanosecond or 300 ns apart at times, written in UTC or
        another zone; now and then the first or last instant of the years 0001-9999."""
        if self.chance(3):
            return self.pick(_FAR)
        moment = t(self.between(0, 6)).astimezone(self.pick((UTC, PLUS_TWO)))
        nanos = self.pick((0, 0, 0, 1, 300, 1000))
        zone = moment.isoformat()[19:]
        zone = self.pick(("Z", "z")) if zone == "+00:00" else zone
        return f"{moment:%Y-%m-%dT%H:%M:%S}.{nanos:09d}{zone}"

    def quantity(self, low: int, high: int) -> int:
        """Mostly a small quantity in [low, high]; now and then the contract's limit."""
        if self.chance(4):
            return BIG if high > 0 else -BIG
        return self.between(low, high)


#: The first and last instants of the years 0001-9999 in UTC, one written from another zone.
_FAR = (
    "0001-01-01T00:00:00Z",
    "0001-01-01T01:00:00+01:00",
    "9999-12-31T23:59:59.999999999Z",
    "9999-12-31T22:59:59.999999999-01:00",
)


#: Non-empty node sets a channel may sell from, simplest first.
_NODE_SETS = tuple(
    subset for size in (1, 2, 3) for subset in itertools.combinations(NODES, size)
)
_SKU_SETS = tuple(
    subset for size in (2, 3) for subset in itertools.combinations(SKUS, size)
)


def _topology(d: _Digits) -> Topology:
    """Two channels over subsets of :data:`NODES`, with buffers, bands and node defaults."""
    channels = tuple(
        ChannelSpec(
            name=name,
            nodes=d.pick(_NODE_SETS),
            buffer=d.pick((0, 0, 1, 2, 3)),
            low_stock_threshold=d.between(0, 6),
        )
        for name in CHANNELS
    )
    defaults = {node: safety for node in NODES if (safety := d.pick((0, 0, 0, 1, 2, 3)))}
    return Topology(channels=channels, safety_defaults=defaults)


def topologies() -> st.SearchStrategy[Topology]:
    """Random topologies: two channels, buffers, low-stock bands and node defaults."""
    return st.builds(lambda n: _topology(_Digits(n)), _DETAIL)


def _stock_event(d: _Digits, eid: str, skus: Sequence[str]) -> Event:
    kind = d.pick(("snapshot", "adjusted", "policy", "snapshot", "adjusted"))
    source = d.pick(SOURCES)
    at = d.moment()
    sku, node = d.pick(skus), d.pick(NODES)
    if kind == "snapshot":
        return snapshot(sku, node, d.quantity(0, 20), d.moment(), at=at, eid=eid, source=source)
    if kind == "adjusted":
        delta = d.quantity(-6, 7) if d.chance(50) else -d.quantity(1, 6)
        return adjusted(sku, node, delta or 1, at, eid=eid, source=source)
    return policy(sku, node, d.between(0, 4), at, eid=eid, source=source)


def _line_ids(d: _Digits, known: Sequence[str]) -> list[str]:
    """One or two distinct line ids, mostly ones the order or RMA has."""
    pool = list(known) if known and not d.chance(15) else [*LINE_IDS, "9"]
    first = d.pick(pool)
    rest = [i for i in pool if i != first]
    return [first, d.pick(rest)] if rest and d.chance(30) else [first]


def _order_event(
    d: _Digits, eid: str, order_id: str, first: bool, known: Sequence[str], skus: Sequence[str]
) -> Event:
    kind = "created" if first and not d.chance(10) else d.pick(
        ("allocated", "cancelled", "shipped", "shipped", "allocated", "cancelled", "created")
    )
    source, at = d.pick(SOURCES), d.moment()
    if kind == "created":
        ids = _line_ids(d, LINE_IDS[:2])
        channel = d.pick((*CHANNELS, "kiosk")) if d.chance(10) else d.pick(CHANNELS)
        return created(
            order_id,
            [(i, d.pick(skus), d.between(1, 5), d.pick(NODES) if d.chance(50) else None)
             for i in ids],
            channel=channel, at=at, eid=eid, source=source,
        )
    ids = _line_ids(d, known)
    if kind == "allocated":
        return allocated(order_id, {i: d.pick(NODES) for i in ids}, at=at, eid=eid,
                         source=source)
    qtys = {i: d.between(1, 6) for i in ids}
    if kind == "cancelled":
        return cancelled(order_id, None if d.chance(30) else qtys, at=at, eid=eid,
                         source=source)
    return shipped(order_id, d.pick(NODES), qtys, at=at, eid=eid, source=source)


def _return_event(
    d: _Digits, eid: str, rma_id: str, first: bool, known: Sequence[str], skus: Sequence[str]
) -> Event:
    kind = "authorized" if first and d.chance(70) else d.pick(
        ("received", "inspected", "received", "inspected", "authorized")
    )
    source, at = d.pick(SOURCES), d.moment()
    if kind == "authorized":
        return authorized(
            rma_id, {i: (d.pick(skus), d.between(1, 4)) for i in _line_ids(d, LINE_IDS[:2])},
            order_id=d.pick(ORDERS) if d.chance(50) else None, at=at, eid=eid, source=source,
        )
    ids = _line_ids(d, known)
    if kind == "received":
        return received(
            rma_id, d.pick(NODES),
            [(i, d.between(1, 4), None if (i in known and d.chance(60)) or d.chance(15)
              else d.pick(skus)) for i in ids],
            at=at, eid=eid, source=source,
        )
    return inspected(
        rma_id, d.pick(NODES),
        [(i, d.between(1, 4), d.pick(("restock", "damaged", "refurbish", "restock"))) for i in ids],
        at=at, eid=eid, source=source,
    )


def _lines_of(event: Event) -> list[str]:
    return [line.line_id for line in getattr(event, "lines", None) or []]


@st.composite
def keyed_scenarios(draw: st.DrawFn) -> tuple[Topology, tuple[str, ...], list[list[Event]]]:
    """A topology, the SKUs in play, and the events of each key in their order.

    Stock events are random; each order and RMA gets a short lifecycle that
    usually starts the right way and then wanders (allocations, partial
    cancels, over-shipments, unknown lines, a second ``order.created``,
    receipts without an authorization). A few exact copies of events (a
    producer's retries) are inserted later under the same key, and a few twins:
    the same event under another (``source``, ``event_id``) pair that joins with
    ``\x1f`` to the same string as the original's, so a different event.
    """
    setup = _Digits(draw(_DETAIL))
    topology = _topology(setup)
    skus = setup.pick(_SKU_SETS)
    numbers = itertools.count()

    def eid() -> str:
        number = next(numbers)
        return f"e\x1f{number}" if number % 2 else f"e{number}"

    stock: dict[str, list[Event]] = {}
    for _ in range(draw(_STOCK_EVENTS)):
        event = _stock_event(_Digits(draw(_DETAIL)), eid(), skus)
        stock.setdefault(event.sku, []).append(event)  # type: ignore[union-attr]
    keyed = list(stock.values())
    for ids, build in ((ORDERS, _order_event), (RMAS, _return_event)):
        for key in ids:
            steps: list[Event] = []
            known: list[str] = []
            for step in range(draw(_LIFECYCLE_STEPS)):
                event = build(_Digits(draw(_DETAIL)), eid(), key, step == 0, known, skus)
                if isinstance(event, OrderCreated | ReturnAuthorized | ReturnReceived):
                    known.extend(i for i in _lines_of(event) if i not in known)
                steps.append(event)
            if steps:
                keyed.append(steps)
    for _ in range(draw(_COPIES) if keyed else 0):
        d = _Digits(draw(_DETAIL))
        steps = d.pick(keyed)
        original = d.between(0, len(steps) - 1)
        steps.insert(d.between(original + 1, len(steps)), steps[original])
    for _ in range(draw(_TWINS) if keyed else 0):
        d = _Digits(draw(_DETAIL))
        steps = d.pick(keyed)
        original = d.between(0, len(steps) - 1)
        twin = twin_of(steps[original])
        if twin is not None:
            steps.insert(d.between(original + 1, len(steps)), twin)
    return topology, skus, keyed


def twin_of(event: Event) -> Event | None:
    """The same event from another (``source``, ``event_id``) pair that joins with ``\x1f`` to
    the same string; None when its ``event_id`` holds no ``\x1f`` to move."""
    head, sep, tail = event.event_id.partition("\x1f")
    if not sep:
        return None
    return msgspec.structs.replace(event, source=f"{event.source}\x1f{head}", event_id=tail)


def interleave(keyed: Sequence[Sequence[Event]], seed: int) -> list[Event]:
    """One arrival order of all events that keeps the order within each key."""
    labels = [k for k, steps in enumerate(keyed) for _ in steps]
    random.Random(seed).shuffle(labels)
    cursors = [0] * len(keyed)
    events = []
    for k in labels:
        events.append(keyed[k][cursors[k]])
        cursors[k] += 1
    return events


_SEED = st.integers(0, 2**32)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Topology, tuple[str, ...], list[Event]]:
    """A topology, the SKUs in play and every event of a keyed scenario in one arrival order."""
    topology, skus, keyed = draw(keyed_scenarios())
    return topology, skus, interleave(keyed, draw(_SEED))


# --- bytes the contract calls invalid ------------------------------------------------------

#: Ways to spoil an event's JSON, each with the reason it must be rejected for. ``utf8``
#: spoils the whole message it is in; the others only their own element of a bulk message.
POISONS = {
    "utf8": "malformed_json",
    "deep": "malformed_json",
    "offset": "invalid_field",
    "year": "invalid_field",
    "quantity": "invalid_field",
}
_QUANTITY_FIELDS = ("on_hand", "delta", "safety_stock")


def poisoned(event: Event, poison: str) -> bytes:
    """``event``'s JSON spoiled by ``poison`` (see :data:`POISONS`)."""
    body = msgspec.to_builtins(event)
    body["type"] = type(event).__struct_config__.tag
    if poison == "offset":
        body["occurred_at"] = "2026-11-27T09:00:00+0530"
    elif poison == "year":
        body["occurred_at"] = "9999-12-31T23:59:59-01:00"
    elif poison == "quantity":
        field = next((f for f in _QUANTITY_FIELDS if f in body), None)
        if field is not None:
            body[field] = 1_000_000_001 if body[field] >= 0 else -1_000_000_001
        elif body.get("lines") and "qty" in body["lines"][0]:
            body["lines"][0]["qty"] = 1_000_000_001
        else:  # no quantity to spoil (order.allocated, a whole-order cancel)
            body["occurred_at"] = "0001-01-01T00:00:00+00:01"
    encoded = msgspec.json.encode(body)
    if poison == "utf8":
        return encoded[:-1] + b',"note":"caf\xe9"}'
    if poison == "deep":
        return encoded[:-1] + b',"ignored":' + b"[" * 64 + b"]" * 64 + b"}"
    return encoded


def poisons() -> st.SearchStrategy[list[tuple[int, int, str]]]:
    """Where to put spoiled copies: (message pick, place pick, poison)."""
    return st.lists(
        st.tuples(st.integers(0, 2**16), st.integers(0, 2**16), st.sampled_from(sorted(POISONS))),
        max_size=4,
    )
