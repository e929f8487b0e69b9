"""Stored state: the position of one SKU (applier) and of one order or RMA (translators).

These are what the Redis store keeps, msgpack-encoded. They are mutable on
purpose: the pure core updates a position in place on the hot path, and
callers that need the old value keep its encoded bytes or a copy.

The array-like Structs (:class:`NodePosition`, :class:`OrderLine`,
:class:`RmaLine`) only grow at the end: built by keyword, a new field goes last
with a default; ``tests/codecs/test_golden.py`` pins the bytes.

Form history (the previous one is still read, see :mod:`stocksync.codecs.forms`):

1. Times (``as_of``, ``changes``, ``policy_at``) were µs integers; ``seen`` keys
   were ``source + "\\x1f" + event_id`` strings.
2. (now) Times are :data:`~stocksync.codecs.events.Instant` pairs, ``seen`` keys
   are (``source``, ``event_id``) pairs, and a node keeps the (``source``,
   ``event_id``) of its winning snapshot and policy (``snap_by``, ``policy_by``,
   appended) for the contract's tie-breaks. A form 1 value that holds a time or
   a key is rejected by the form 2 decoder and read as form 1, converted; one
   that holds neither means the same in both forms. Converted nodes have no
   winner pair: a tie with such a snapshot or policy keeps it (the rule before).
"""

from __future__ import annotations

import msgspec

from stocksync.codecs.events import EventKey, Instant
from stocksync.codecs.forms import FormReader, instant_of_micros, key_of_joined

__all__ = [
    "NodePosition",
    "OrderLine",
    "OrderState",
    "Position",
    "RmaLine",
    "RmaState",
    "order_decoder",
    "position_decoder",
    "rma_decoder",
    "state_encoder",
]


class NodePosition(msgspec.Struct, kw_only=True, array_like=True):
    """What the model knows about one SKU at one node."""

    #: ``on_hand`` of the snapshot with the latest ``as_of``, None before any snapshot.
    snap: int | None = None
    #: That snapshot's ``as_of``.
    as_of: Instant | None = None
    #: Physical changes later than ``as_of``: ``[occurred_at, delta]``, sorted by time.
    changes: list[tuple[Instant, int]] = msgspec.field(default_factory=list)
    #: Open reservations of order lines allocated to this node.
    reserved: int = 0
    #: Units received into quarantine, all time.
    received: int = 0
    #: Units inspected out of quarantine, all time.
    inspected: int = 0
    #: ``occurred_at`` of the latest ``stock.policy``, None before any.
    policy_at: Instant | None = None
    #: Safety stock from that policy.
    safety: int | None = None
    #: (``source``, ``event_id``) of that snapshot: the greater pair wins a tie of ``as_of``.
    snap_by: EventKey | None = None
    #: (``source``, ``event_id``) of that policy: the greater pair wins a tie of ``occurred_at``.
    policy_by: EventKey | None = None


class Position(msgspec.Struct, kw_only=True):
    """Everything the applier keeps for one SKU."""

    sku: str
    #: Bumped on every change; the compare-and-set token of the store and the API's ETag.
    version: int = 0
    #: Milliseconds since the epoch of the last change.
    updated_at: int = 0
    nodes: dict[str, NodePosition] = msgspec.field(default_factory=dict)
    #: Unallocated demand (open reservations without a node) per channel.
    demand: dict[str, int] = msgspec.field(default_factory=dict)
    #: Highest effect id applied per source topic partition: ``[offset, index, seq]``.
    wm: dict[str, tuple[int, int, int]] = msgspec.field(default_factory=dict)
    #: (``source``, ``event_id``) keys of applied stock events, with when they were seen (ms).
    seen: dict[EventKey, int] = msgspec.field(default_factory=dict)


class OrderLine(msgspec.Struct, kw_only=True, array_like=True):
    """One order line: what it reserves and where."""

    sku: str
    #: Open (still reserved) quantity.
    open: int
    #: Node the reservation sits at; None while unallocated (channel demand).
    node: str | None = None


class OrderState(msgspec.Struct, kw_only=True):
    """The lines of one order, owned by the orders translator of its partition."""

    order_id: str
    channel: str
    lines: dict[str, OrderLine] = msgspec.field(default_factory=dict)
    #: Last source event translated: ``[partition, offset, index]`` of topic partition ``src``.
    wm: tuple[int, int, int] = (-1, -1, -1)
    src: str = ""
    #: (``source``, ``event_id``) of events applied to this order, with when seen (ms).
    seen: dict[EventKey, int] = msgspec.field(default_factory=dict)
    #: Milliseconds since the epoch of the last event.
    updated_at: int = 0


class RmaLine(msgspec.Struct, kw_only=True, array_like=True):
    """One RMA line; ``sku`` is known once it was authorized or received with one."""

    sku: str | None = None
    authorized: int = 0
    received: int = 0
    inspected: int = 0


class RmaState(msgspec.Struct, kw_only=True):
    """The lines of one RMA, owned by the returns translator of its partition."""

    rma_id: str
    order_id: str | None = None
    lines: dict[str, RmaLine] = msgspec.field(default_factory=dict)
    wm: tuple[int, int, int] = (-1, -1, -1)
    src: str = ""
    seen: dict[EventKey, int] = msgspec.field(default_factory=dict)
    updated_at: int = 0


# --- form 1, read for what Redis still holds after an upgrade ----------------------------


class _NodePosition1(msgspec.Struct, array_like=True):
    snap: int | None = None
    as_of: int | None = None
    changes: list[tuple[int, int]] = msgspec.field(default_factory=list)
    reserved: int = 0
    received: int = 0
    inspected: int = 0
    policy_at: int | None = None
    safety: int | None = None


class _Position1(msgspec.Struct):
    sku: str
    version: int = 0
    updated_at: int = 0
    nodes: dict[str, _NodePosition1] = msgspec.field(default_factory=dict)
    demand: dict[str, int] = msgspec.field(default_factory=dict)
    wm: dict[str, tuple[int, int, int]] = msgspec.field(default_factory=dict)
    seen: dict[str, int] = msgspec.field(default_factory=dict)


class _OrderState1(msgspec.Struct):
    order_id: str
    channel: str
    lines: dict[str, OrderLine] = msgspec.field(default_factory=dict)
    wm: tuple[int, int, int] = (-1, -1, -1)
    src: str = ""
    seen: dict[str, int] = msgspec.field(default_factory=dict)
    updated_at: int = 0


class _RmaState1(msgspec.Struct):
    rma_id: str
    order_id: str | None = None
    lines: dict[str, RmaLine] = msgspec.field(default_factory=dict)
    wm: tuple[int, int, int] = (-1, -1, -1)
    src: str = ""
    seen: dict[str, int] = msgspec.field(default_factory=dict)
    updated_at: int = 0


def _instant(micros: int | None) -> Instant | None:
    return None if micros is None else instant_of_micros(micros)


def _seen(seen: dict[str, int]) -> dict[EventKey, int]:
    return {key_of_joined(key): at for key, at in seen.items()}


def _upgrade_position(old: _Position1) -> Position:
    nodes = {
        name: NodePosition(
            snap=node.snap,
            as_of=_instant(node.as_of),
            changes=[(instant_of_micros(at), delta) for at, delta in node.changes],
            reserved=node.reserved,
            received=node.received,
            inspected=node.inspected,
            policy_at=_instant(node.policy_at),
            safety=node.safety,
        )
        for name, node in old.nodes.items()
    }
    return Position(
        sku=old.sku, version=old.version, updated_at=old.updated_at, nodes=nodes,
        demand=old.demand, wm=old.wm, seen=_seen(old.seen),
    )


def _upgrade_order(old: _OrderState1) -> OrderState:
    return OrderState(
        order_id=old.order_id, channel=old.channel, lines=old.lines, wm=old.wm, src=old.src,
        seen=_seen(old.seen), updated_at=old.updated_at,
    )


def _upgrade_rma(old: _RmaState1) -> RmaState:
    return RmaState(
        rma_id=old.rma_id, order_id=old.order_id, lines=old.lines, wm=old.wm, src=old.src,
        seen=_seen(old.seen), updated_at=old.updated_at,
    )


state_encoder = msgspec.msgpack.Encoder()
#: Decoders of the stored forms, current or form 1 (converted).
position_decoder: FormReader[Position, _Position1] = FormReader(
    Position, _Position1, _upgrade_position
)
order_decoder: FormReader[OrderState, _OrderState1] = FormReader(
    OrderState, _OrderState1, _upgrade_order
)
rma_decoder: FormReader[RmaState, _RmaState1] = FormReader(RmaState, _RmaState1, _upgrade_rma)
