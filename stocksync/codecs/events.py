"""Canonical inventory events, schema 1 (``contracts/events-v1.md``) as msgspec Structs.

Every event is a frozen Struct in one tagged union, :data:`Event`, with the tag
in the ``type`` field. Constraints of the contract live in the types
(identifier charset and length, quantity ranges, ``schema == 1``, timestamps
with an offset); the few that a type cannot say (``delta != 0``, distinct line
ids) are checked in ``__post_init__``, which msgspec turns into a
``ValidationError`` naming the problem. Unknown fields are ignored: a producer
may add fields without breaking us.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "MAX_BULK",
    "MAX_LINES",
    "MAX_QUANTITY",
    "Disposition",
    "Event",
    "EventBase",
    "Identifier",
    "OrderAllocated",
    "OrderCancelled",
    "OrderCreated",
    "OrderEvent",
    "OrderShipped",
    "ReturnAuthorized",
    "ReturnEvent",
    "ReturnInspected",
    "ReturnReceived",
    "StockAdjusted",
    "StockEvent",
    "StockPolicy",
    "StockSnapshot",
    "event_schema",
    "to_micros",
]

#: Most events a bulk message may carry.
MAX_BULK = 10_000
#: Most lines an order or return event may carry.
MAX_LINES = 500

# msgspec applies patterns with ``re.search``, where a bare ``$`` also matches
# before a trailing newline ("SKU-1\n" would pass); ``(?!\n)`` closes that gap,
# and in the JSON Schema (ECMAScript, where ``$`` is already the end) it is a no-op.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9._:/-]{1,64}$(?!\n)"

Identifier = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=IDENTIFIER_PATTERN,
        description="1-64 characters from [A-Za-z0-9._:/-]",
    ),
]
EventId = Annotated[str, Meta(min_length=1, max_length=128)]
# The contract bounds event_id and the identifiers only: a longer source or
# correlation id, or any shipment number, must not cost the event it came with.
Source = Annotated[str, Meta(min_length=1)]
CorrelationId = str
Timestamp = Annotated[datetime, Meta(tz=True, description="RFC 3339 with offset or Z")]
#: Largest quantity an event may carry. Far above any real stock count, and low enough that
#: no sum of quantities the model keeps can leave 64 bits (the stored encoding).
MAX_QUANTITY = 1_000_000_000
NonNegative = Annotated[int, Meta(ge=0, le=MAX_QUANTITY)]
Positive = Annotated[int, Meta(gt=0, le=MAX_QUANTITY)]
Delta = Annotated[int, Meta(ge=-MAX_QUANTITY, le=MAX_QUANTITY, description="not 0")]

AdjustReason = Literal[
    "receipt",
    "cycle_count",
    "damage",
    "shrink",
    "transfer_in",
    "transfer_out",
    "correction",
    "other",
]
Disposition = Literal["restock", "damaged", "refurbish"]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(ts: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime: the UTC instant, exactly."""
    return (ts - _EPOCH) // _MICROSECOND


def _distinct(lines: list[object] | None, event: str) -> None:
    if not lines:
        return
    ids = [getattr(line, "line_id") for line in lines]  # noqa: B009
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{event} lists line_id {dup!r} more than once - at `$.lines`")


class EventBase(msgspec.Struct, kw_only=True, frozen=True, tag_field="type"):
    """The envelope every event carries."""

    schema: Literal[1]
    event_id: EventId
    occurred_at: Timestamp
    source: Source
    correlation_id: CorrelationId | None = None

    def __post_init__(self) -> None:
        # Normalise to UTC so every later comparison and encoding sees one zone.
        if self.occurred_at.utcoffset():
            msgspec.structs.force_setattr(self, "occurred_at", self.occurred_at.astimezone(UTC))


# --- stock (topic stock, key sku) -------------------------------------------------


class StockSnapshot(EventBase, frozen=True, tag="stock.snapshot"):
    """An absolute physical count of one SKU at one node, as of a moment."""

    sku: Identifier
    node: Identifier
    on_hand: NonNegative
    as_of: Timestamp

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.as_of.utcoffset():
            msgspec.structs.force_setattr(self, "as_of", self.as_of.astimezone(UTC))


class StockAdjusted(EventBase, frozen=True, tag="stock.adjusted"):
    """A relative change of physical stock of one SKU at one node."""

    sku: Identifier
    node: Identifier
    delta: Delta
    reason: AdjustReason

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.delta == 0:
            raise ValueError("stock.adjusted delta must not be 0 - at `$.delta`")


class StockPolicy(EventBase, frozen=True, tag="stock.policy"):
    """The safety stock of one SKU at one node."""

    sku: Identifier
    node: Identifier
    safety_stock: NonNegative


# --- orders (topic orders, key order_id) --------------------------------------------


class CreatedLine(msgspec.Struct, kw_only=True, frozen=True):
    """One line of a new order: reserves ``qty`` at ``node`` or against the channel."""

    line_id: Identifier
    sku: Identifier
    qty: Positive
    node: Identifier | None = None


class AllocatedLine(msgspec.Struct, kw_only=True, frozen=True):
    """Moves a line's open reservation to ``node``."""

    line_id: Identifier
    node: Identifier


class QtyLine(msgspec.Struct, kw_only=True, frozen=True):
    """A quantity of one known line (cancel, ship)."""

    line_id: Identifier
    qty: Positive


Lines = Annotated[list[CreatedLine], Meta(min_length=1, max_length=MAX_LINES)]
AllocatedLines = Annotated[list[AllocatedLine], Meta(min_length=1, max_length=MAX_LINES)]
QtyLines = Annotated[list[QtyLine], Meta(min_length=1, max_length=MAX_LINES)]


class OrderCreated(EventBase, frozen=True, tag="order.created"):
    """A new order whose lines reserve stock."""

    order_id: Identifier
    channel: Identifier
    lines: Lines
    #: The checkout hold this order converts (api-v1, Holds).
    hold_id: Identifier | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _distinct(self.lines, "order.created")  # type: ignore[arg-type]


class OrderAllocated(EventBase, frozen=True, tag="order.allocated"):
    """Lines of an order allocated to a node."""

    order_id: Identifier
    lines: AllocatedLines


class OrderCancelled(EventBase, frozen=True, tag="order.cancelled"):
    """Lines (or, without ``lines``, the whole order) cancelled."""

    order_id: Identifier
    lines: QtyLines | None = None


class OrderShipped(EventBase, frozen=True, tag="order.shipped"):
    """Lines of an order shipped from ``node``."""

    order_id: Identifier
    shipment_id: str
    node: Identifier
    lines: QtyLines


# --- returns (topic returns, key rma_id) --------------------------------------------


class AuthorizedLine(msgspec.Struct, kw_only=True, frozen=True):
    """A line a customer may send back."""

    line_id: Identifier
    sku: Identifier
    qty: Positive


class ReceivedLine(msgspec.Struct, kw_only=True, frozen=True):
    """A returned quantity received at a node; ``sku`` may be left out for authorized lines."""

    line_id: Identifier
    qty: Positive
    sku: Identifier | None = None


class InspectedLine(msgspec.Struct, kw_only=True, frozen=True):
    """An inspected quantity and what becomes of it."""

    line_id: Identifier
    qty: Positive
    disposition: Disposition


AuthorizedLines = Annotated[list[AuthorizedLine], Meta(min_length=1, max_length=MAX_LINES)]
ReceivedLines = Annotated[list[ReceivedLine], Meta(min_length=1, max_length=MAX_LINES)]
InspectedLines = Annotated[list[InspectedLine], Meta(min_length=1, max_length=MAX_LINES)]


class ReturnAuthorized(EventBase, frozen=True, tag="return.authorized"):
    """An RMA whose lines become known; no stock effect."""

    rma_id: Identifier
    lines: AuthorizedLines
    order_id: Identifier | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _distinct(self.lines, "return.authorized")  # type: ignore[arg-type]


class ReturnReceived(EventBase, frozen=True, tag="return.received"):
    """Returned goods received into quarantine at ``node``."""

    rma_id: Identifier
    node: Identifier
    lines: ReceivedLines


class ReturnInspected(EventBase, frozen=True, tag="return.inspected"):
    """Returned goods inspected at ``node``: out of quarantine, restocked or not."""

    rma_id: Identifier
    node: Identifier
    lines: InspectedLines


StockEvent = StockSnapshot | StockAdjusted | StockPolicy
OrderEvent = OrderCreated | OrderAllocated | OrderCancelled | OrderShipped
ReturnEvent = ReturnAuthorized | ReturnReceived | ReturnInspected
#: Every event of schema 1, tagged by ``type``.
Event = (
    StockSnapshot
    | StockAdjusted
    | StockPolicy
    | OrderCreated
    | OrderAllocated
    | OrderCancelled
    | OrderShipped
    | ReturnAuthorized
    | ReturnReceived
    | ReturnInspected
)


def event_schema() -> dict[str, object]:
    """The JSON Schema of one event or a bulk array of events, generated by msgspec."""
    single = msgspec.json.schema(Event)
    defs = single.pop("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "stocksync events, schema 1",
        "description": (
            "One event, or a bulk message: a JSON array of 1 to "
            f"{MAX_BULK} events. Unknown fields are ignored."
        ),
        "anyOf": [
            single,
            {"type": "array", "items": single, "minItems": 1, "maxItems": MAX_BULK},
        ],
        "$defs": defs,
    }
