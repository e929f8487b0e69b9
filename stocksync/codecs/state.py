"""Stored state: the position of one SKU (applier) and of one order or RMA (translators).

These are what the Redis store keeps, msgpack-encoded. They are mutable on
purpose: the pure core updates a position in place on the hot path, and
callers that need the old value keep its encoded bytes or a copy.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "NodePosition",
    "OrderLine",
    "OrderState",
    "Position",
    "RmaLine",
    "RmaState",
    "position_decoder",
    "state_encoder",
]


class NodePosition(msgspec.Struct, array_like=True):
    """What the model knows about one SKU at one node."""

    #: ``on_hand`` of the snapshot with the latest ``as_of``, None before any snapshot.
    snap: int | None = None
    #: That snapshot's ``as_of`` in µs since the epoch.
    as_of: int | None = None
    #: Physical changes later than ``as_of``: ``[occurred_at µs, delta]``, sorted by time.
    changes: list[tuple[int, int]] = msgspec.field(default_factory=list)
    #: Open reservations of order lines allocated to this node.
    reserved: int = 0
    #: Units received into quarantine, all time.
    received: int = 0
    #: Units inspected out of quarantine, all time.
    inspected: int = 0
    #: ``occurred_at`` (µs) of the latest ``stock.policy``, None before any.
    policy_at: int | None = None
    #: Safety stock from that policy.
    safety: int | None = None


class Position(msgspec.Struct):
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
    seen: dict[str, int] = msgspec.field(default_factory=dict)


class OrderLine(msgspec.Struct, array_like=True):
    """One order line: what it reserves and where."""

    sku: str
    #: Open (still reserved) quantity.
    open: int
    #: Node the reservation sits at; None while unallocated (channel demand).
    node: str | None = None


class OrderState(msgspec.Struct):
    """The lines of one order, owned by the orders translator of its partition."""

    order_id: str
    channel: str
    lines: dict[str, OrderLine] = msgspec.field(default_factory=dict)
    #: Last source event translated: ``[partition, offset, index]`` of topic partition ``src``.
    wm: tuple[int, int, int] = (-1, -1, -1)
    src: str = ""
    #: (``source``, ``event_id``) of events applied to this order, with when seen (ms).
    seen: dict[str, int] = msgspec.field(default_factory=dict)
    #: Milliseconds since the epoch of the last event.
    updated_at: int = 0


class RmaLine(msgspec.Struct, array_like=True):
    """One RMA line; ``sku`` is known once it was authorized or received with one."""

    sku: str | None = None
    authorized: int = 0
    received: int = 0
    inspected: int = 0


class RmaState(msgspec.Struct):
    """The lines of one RMA, owned by the returns translator of its partition."""

    rma_id: str
    order_id: str | None = None
    lines: dict[str, RmaLine] = msgspec.field(default_factory=dict)
    wm: tuple[int, int, int] = (-1, -1, -1)
    src: str = ""
    seen: dict[str, int] = msgspec.field(default_factory=dict)
    updated_at: int = 0


state_encoder = msgspec.msgpack.Encoder()
position_decoder = msgspec.msgpack.Decoder(Position)
