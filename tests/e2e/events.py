"""Events as producers send them, and the messages that carry them.

* :class:`Wire` builds events the way producers send them (JSON objects, fresh
  ``event_id``, RFC 3339 times); :func:`single` and :func:`bulk` wrap them in
  messages whose items say what must become of them: :func:`ok` items are
  judged by the reference model, :func:`bad` items must be dead-lettered with
  the given reason.
* :func:`realistic_stream` generates a seeded mix of every event type.
* The scenarios' topology (:data:`NODES`, :data:`CHANNELS`, :data:`NODE_SAFETY`).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from stocksync.codecs.messages import Reason

__all__ = [
    "CHANNELS",
    "NODES",
    "NODE_SAFETY",
    "T0",
    "Channel",
    "Item",
    "Msg",
    "Wire",
    "bad",
    "bulk",
    "ok",
    "realistic_stream",
    "single",
]


#: Minute 0 of every scenario; event times are minutes after it.
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
#: Nodes the scenarios use; every one belongs to a channel, so the projection shows it.
NODES = ("dc-east", "dc-west", "store-1")
#: Default safety stock per node (the ``[nodes]`` table of the config).
NODE_SAFETY = {"dc-west": 2}


@dataclass(frozen=True)
class Channel:
    """A configured channel, written to the TOML file and given to the reference."""

    name: str
    nodes: tuple[str, ...]
    buffer: int = 0
    low_stock_threshold: int = 0
    #: The feed's ``notify`` and ``notify_min_interval_ms`` (the defaults when None).
    notify: str | None = None
    notify_min_interval_ms: int | None = None


CHANNELS = (
    Channel("web", ("dc-east", "dc-west"), buffer=1, low_stock_threshold=5),
    Channel("store", ("store-1", "dc-east"), low_stock_threshold=2),
)


# --- events as producers send them -------------------------------------------------------


def _moment(at: float | datetime) -> str:
    moment = at if isinstance(at, datetime) else T0 + timedelta(minutes=at)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _encode(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Wire:
    """Builds wire events (plain JSON objects), each with a fresh ``event_id``; times in minutes."""

    def __init__(self, tag: str = "ev") -> None:
        self.tag = tag
        self._ids = itertools.count(1)

    def envelope(
        self, kind: str, at: float | datetime, source: str, eid: str | None = None
    ) -> dict[str, Any]:
        """The fields every event carries."""
        return {
            "type": kind,
            "schema": 1,
            "event_id": eid or f"{self.tag}-{next(self._ids)}",
            "occurred_at": _moment(at),
            "source": source,
        }

    def snapshot(
        self, sku: str, node: str, on_hand: int, as_of: float | datetime, *,
        at: float | datetime | None = None, source: str = "erp",
    ) -> dict[str, Any]:
        """``stock.snapshot``: ``on_hand`` at ``node`` as of ``as_of``."""
        return {
            **self.envelope("stock.snapshot", as_of if at is None else at, source),
            "sku": sku, "node": node, "on_hand": on_hand, "as_of": _moment(as_of),
        }

    def adjusted(
        self, sku: str, node: str, delta: int, at: float | datetime, *,
        reason: str = "correction", source: str = "wms",
    ) -> dict[str, Any]:
        """``stock.adjusted``: ``delta`` at ``node``, occurred at ``at``."""
        return {
            **self.envelope("stock.adjusted", at, source),
            "sku": sku, "node": node, "delta": delta, "reason": reason,
        }

    def policy(
        self, sku: str, node: str, safety_stock: int, at: float | datetime, *, source: str = "erp"
    ) -> dict[str, Any]:
        """``stock.policy``: safety stock at ``node`` set at ``at``."""
        return {
            **self.envelope("stock.policy", at, source),
            "sku": sku, "node": node, "safety_stock": safety_stock,
        }

    def created(
        self, order_id: str, lines: Sequence[tuple[str, str, int, str | None]], *,
        channel: str = "web", at: float | datetime = 30, source: str = "shop",
    ) -> dict[str, Any]:
        """``order.created``; lines are ``(line_id, sku, qty, node or None)``."""
        body = []
        for line_id, sku, qty, node in lines:
            line: dict[str, Any] = {"line_id": line_id, "sku": sku, "qty": qty}
            if node is not None:
                line["node"] = node
            body.append(line)
        return {
            **self.envelope("order.created", at, source),
            "order_id": order_id, "channel": channel, "lines": body,
        }

    def allocated(
        self, order_id: str, lines: dict[str, str], *, at: float | datetime = 31,
        source: str = "oms",
    ) -> dict[str, Any]:
        """``order.allocated``; lines map line_id to node."""
        return {
            **self.envelope("order.allocated", at, source),
            "order_id": order_id,
            "lines": [{"line_id": i, "node": n} for i, n in lines.items()],
        }

    def cancelled(
        self, order_id: str, lines: dict[str, int] | None = None, *,
        at: float | datetime = 32, source: str = "shop",
    ) -> dict[str, Any]:
        """``order.cancelled``; lines map line_id to qty, None cancels the whole order."""
        event = {**self.envelope("order.cancelled", at, source), "order_id": order_id}
        if lines is not None:
            event["lines"] = [{"line_id": i, "qty": q} for i, q in lines.items()]
        return event

    def shipped(
        self, order_id: str, node: str, lines: dict[str, int], *, at: float | datetime = 33,
        source: str = "wms-east", shipment_id: str = "shp-1",
    ) -> dict[str, Any]:
        """``order.shipped`` from ``node``; lines map line_id to qty."""
        return {
            **self.envelope("order.shipped", at, source),
            "order_id": order_id, "shipment_id": shipment_id, "node": node,
            "lines": [{"line_id": i, "qty": q} for i, q in lines.items()],
        }

    def authorized(
        self, rma_id: str, lines: dict[str, tuple[str, int]], *, order_id: str | None = None,
        at: float | datetime = 50, source: str = "returns",
    ) -> dict[str, Any]:
        """``return.authorized``; lines map line_id to (sku, qty)."""
        event = {
            **self.envelope("return.authorized", at, source),
            "rma_id": rma_id,
            "lines": [{"line_id": i, "sku": s, "qty": q} for i, (s, q) in lines.items()],
        }
        if order_id is not None:
            event["order_id"] = order_id
        return event

    def received(
        self, rma_id: str, node: str, lines: Sequence[tuple[str, int, str | None]], *,
        at: float | datetime = 51, source: str = "returns",
    ) -> dict[str, Any]:
        """``return.received`` at ``node``; lines are ``(line_id, qty, sku or None)``."""
        body = []
        for line_id, qty, sku in lines:
            line: dict[str, Any] = {"line_id": line_id, "qty": qty}
            if sku is not None:
                line["sku"] = sku
            body.append(line)
        return {**self.envelope("return.received", at, source), "rma_id": rma_id,
                "node": node, "lines": body}

    def inspected(
        self, rma_id: str, node: str, lines: Sequence[tuple[str, int, str]], *,
        at: float | datetime = 52, source: str = "returns",
    ) -> dict[str, Any]:
        """``return.inspected`` at ``node``; lines are ``(line_id, qty, disposition)``."""
        return {
            **self.envelope("return.inspected", at, source),
            "rma_id": rma_id, "node": node,
            "lines": [{"line_id": i, "qty": q, "disposition": d} for i, q, d in lines],
        }


# --- messages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One event of a message: its bytes, and the reason it must be dead-lettered, if any.

    ``reason`` None means the reference model judges the event (applied,
    duplicate, or rejected for an unknown order, line or RMA).
    """

    raw: bytes
    reason: str | None = None


def ok(event: dict[str, Any]) -> Item:
    """A schema-valid event; the reference decides what becomes of it."""
    return Item(_encode(event))


def bad(payload: dict[str, Any] | bytes, reason: str) -> Item:
    """An event that must reach the dead-letter topic with ``reason`` and change nothing."""
    return Item(payload if isinstance(payload, bytes) else _encode(payload), reason)


_KIND_OF_TYPE = {"stock": "stock", "order": "orders", "return": "returns"}
_KEY_FIELD = {"stock": "sku", "orders": "order_id", "returns": "rma_id"}


@dataclass(frozen=True)
class Msg:
    """One Kafka message: a single event or a bulk array, its key, and optionally a partition."""

    kind: str
    key: str | None
    items: tuple[Item, ...]
    is_bulk: bool
    partition: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def value(self) -> bytes:
        """The message value: the event itself, or a JSON array of the items."""
        if not self.is_bulk:
            return self.items[0].raw
        return b"[" + b",".join(item.raw for item in self.items) + b"]"


def _as_item(event: Item | dict[str, Any]) -> Item:
    return event if isinstance(event, Item) else ok(event)


def single(
    event: Item | dict[str, Any], *, kind: str | None = None, key: str | None = None,
    partition: int | None = None, headers: Sequence[tuple[str, bytes]] = (),
) -> Msg:
    """A one-event message; topic and key follow the contract unless given."""
    item = _as_item(event)
    if kind is None or key is None:
        decoded = json.loads(item.raw)
        kind = kind or _KIND_OF_TYPE[decoded["type"].split(".", 1)[0]]
        key = key if key is not None else decoded[_KEY_FIELD[kind]]
    return Msg(kind, key, (item,), False, partition, tuple(headers))


def bulk(
    kind: str, key: str, events: Iterable[Item | dict[str, Any]], *, partition: int | None = None
) -> Msg:
    """A bulk message (JSON array) on ``kind``'s topic under ``key``."""
    return Msg(kind, key, tuple(_as_item(e) for e in events), True, partition)


# --- a realistic stream -------------------------------------------------------------------


_REASONS = ("receipt", "cycle_count", "damage", "shrink", "transfer_in", "transfer_out",
            "correction", "other")
_DISPOSITIONS = ("restock", "damaged", "refurbish")


def realistic_stream(
    rng: random.Random,
    wire: Wire,
    events: int,
    *,
    skus: int = 40,
    duplicates: bool = True,
    invalid: bool = True,
) -> list[Msg]:
    """About ``events`` events in messages: stock counts and changes, order and return
    lifecycles, bulk exports, and (unless turned off) producer duplicates and invalid events.

    Times only move forward except snapshot ``as_of`` values, drawn up to half an hour
    back so older counts arrive after newer ones. Snapshot and policy times never tie,
    so the model does not depend on how the broker interleaves different keys.
    """
    pool = [f"SKU-{i:03d}" for i in range(skus)]
    clock = 0.0
    orders: dict[str, dict[str, list[Any]]] = {}  # order_id -> line_id -> [sku, open, node]
    rmas: dict[str, dict[str, list[Any]]] = {}  # rma_id -> line_id -> [sku, received]
    history: list[Msg] = []
    out: list[Msg] = []
    order_ids = itertools.count(1)
    rma_ids = itertools.count(1)
    exports = itertools.count(1)
    count = 0

    def tick() -> float:
        nonlocal clock
        clock += rng.uniform(0.001, 0.05)
        return clock

    def stock_event() -> dict[str, Any]:
        sku, node = rng.choice(pool), rng.choice(NODES)
        roll = rng.random()
        if roll < 0.35:
            now = tick()
            return wire.snapshot(sku, node, rng.randint(0, 200), now - rng.uniform(0, 30), at=now)
        if roll < 0.9:
            delta = rng.choice([d for d in range(-10, 25) if d])
            return wire.adjusted(sku, node, delta, tick(), reason=rng.choice(_REASONS))
        return wire.policy(sku, node, rng.randint(0, 5), tick())

    def new_order() -> tuple[str, dict[str, Any]]:
        order_id = f"o-{next(order_ids)}"
        lines = [
            (str(i), rng.choice(pool), rng.randint(1, 5),
             rng.choice(NODES) if rng.random() < 0.5 else None)
            for i in range(1, rng.randint(1, 3) + 1)
        ]
        channel = rng.choice(("web", "web", "store"))
        orders[order_id] = {i: [s, q, n] for i, s, q, n in lines}
        return order_id, wire.created(order_id, lines, channel=channel, at=tick())

    def order_step() -> dict[str, Any]:
        if not orders or rng.random() < 0.35:
            return new_order()[1]
        order_id = rng.choice(list(orders))
        lines = orders[order_id]
        picked = rng.sample(list(lines), rng.randint(1, len(lines)))
        roll = rng.random()
        if roll < 0.35:
            moves = {i: rng.choice(NODES) for i in picked}
            for i, node in moves.items():
                lines[i][2] = node
            return wire.allocated(order_id, moves, at=tick())
        if roll < 0.6:
            if rng.random() < 0.3:
                del orders[order_id]
                return wire.cancelled(order_id, None, at=tick())
            qtys = {i: rng.randint(1, 4) for i in picked}
            for i, qty in qtys.items():
                lines[i][1] = max(0, lines[i][1] - qty)
            return wire.cancelled(order_id, qtys, at=tick())
        # Shipped: mostly the open quantity, sometimes less, sometimes more (over-shipped).
        qtys = {i: max(1, lines[i][1] + rng.choice((0, 0, 0, -1, 1, 2))) for i in picked}
        for i, qty in qtys.items():
            lines[i][1] = max(0, lines[i][1] - qty)
        node = rng.choice([lines[i][2] for i in picked if lines[i][2]] or list(NODES))
        if all(line[1] == 0 for line in lines.values()):
            del orders[order_id]
        return wire.shipped(order_id, node, qtys, at=tick(), shipment_id=f"s-{order_id}")

    def return_step() -> dict[str, Any]:
        roll = rng.random()
        if not rmas or roll < 0.3:
            rma_id = f"rma-{next(rma_ids)}"
            fresh = {str(i): (rng.choice(pool), rng.randint(1, 3))
                     for i in range(1, rng.randint(1, 2) + 1)}
            if rng.random() < 0.75:
                rmas[rma_id] = {i: [s, 0] for i, (s, _) in fresh.items()}
                return wire.authorized(rma_id, fresh, at=tick(),
                                       order_id=f"o-{rng.randint(1, 50)}")
            rmas[rma_id] = {i: [s, q] for i, (s, q) in fresh.items()}
            return wire.received(rma_id, rng.choice(NODES),
                                 [(i, q, s) for i, (s, q) in fresh.items()], at=tick())
        rma_id = rng.choice(list(rmas))
        lines = rmas[rma_id]
        picked = rng.sample(list(lines), rng.randint(1, len(lines)))
        node = rng.choice(NODES)
        if roll < 0.65:
            receipts: list[tuple[str, int, str | None]] = []
            for i in picked:
                qty = rng.randint(1, 3)
                lines[i][1] += qty
                receipts.append((i, qty, None if rng.random() < 0.6 else lines[i][0]))
            return wire.received(rma_id, node, receipts, at=tick())
        verdicts = [(i, rng.randint(1, 3), rng.choice(_DISPOSITIONS)) for i in picked]
        if rng.random() < 0.4:
            del rmas[rma_id]
        return wire.inspected(rma_id, node, verdicts, at=tick())

    def invalid_message() -> Msg:
        sku = rng.choice(pool)
        base = wire.snapshot(sku, "dc-east", 5, tick())
        choice = rng.randrange(8)
        if choice == 0:
            return single(bad(b'{"type":"stock.snapshot","schema":1,', Reason.MALFORMED_JSON),
                          kind="stock", key=sku)
        if choice == 1:
            return single(bad({**base, "type": "stock.teleported"}, Reason.UNKNOWN_TYPE),
                          kind="stock", key=sku)
        if choice == 2:
            return single(bad({**base, "schema": 2}, Reason.UNSUPPORTED_SCHEMA),
                          kind="stock", key=sku)
        if choice == 3:
            return single(bad({**base, "on_hand": -3}, Reason.INVALID_FIELD),
                          kind="stock", key=sku)
        if choice == 4:
            return single(bad({**base, "sku": "no spaces!"}, Reason.INVALID_FIELD),
                          kind="stock", key=sku)
        if choice == 5:  # an order nobody created: the reference rejects it
            return single(wire.allocated(f"o-missing-{rng.randint(1, 9)}", {"1": "dc-east"},
                                         at=tick()))
        if choice == 6:  # a line the order does not have
            order_id = rng.choice(list(orders)) if orders else "o-1"
            return single(wire.shipped(order_id, "dc-east", {"99": 1}, at=tick()))
        # An order event of another order inside a bulk message.
        order_id, created = new_order()
        stray = wire.cancelled(f"o-{rng.randint(1, 50)}", None, at=tick())
        if stray["order_id"] == order_id:
            stray["order_id"] = "o-elsewhere"
        return bulk("orders", order_id, [created, bad(stray, Reason.KEY_MISMATCH)])

    while count < events:
        roll = rng.random()
        if roll < 0.36:
            msg = single(stock_event())
        elif roll < 0.74:
            msg = single(order_step())
        elif roll < 0.86:
            msg = single(return_step())
        elif roll < 0.90 and duplicates and history:
            msg = rng.choice(history)
            msg = Msg(msg.kind, msg.key, msg.items, msg.is_bulk)
        elif roll < 0.94:
            items: list[Item | dict[str, Any]] = [stock_event() for _ in range(rng.randint(5, 40))]
            if invalid and rng.random() < 0.3:
                broken = {**stock_event(), "node": "bad node"}
                items.insert(rng.randrange(1, len(items)), bad(broken, Reason.INVALID_FIELD))
            msg = bulk("stock", f"export-{next(exports)}", items)
        elif roll < 0.96:
            order_id, created = new_order()
            alloc = {i: rng.choice(NODES) for i in orders[order_id]}
            for i, node in alloc.items():
                orders[order_id][i][2] = node
            msg = bulk("orders", order_id, [created, wire.allocated(order_id, alloc, at=tick())])
        elif invalid:
            msg = invalid_message()
        else:
            msg = single(stock_event())
        if not msg.is_bulk and msg.items[0].reason is None:
            history.append(msg)
        out.append(msg)
        count += len(msg.items)
    return out
