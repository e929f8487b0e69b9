"""Canonical inventory events, schema 1 (``contracts/events-v1.md``) as msgspec Structs.

Every event is a frozen Struct in one tagged union, :data:`Event`, with the tag
in the ``type`` field. Constraints of the contract live in the types
(identifier charset and length, quantity ranges, ``schema == 1``); the few that
a type cannot say (``delta != 0``, distinct line ids, timestamps) are checked in
``__post_init__``, which msgspec turns into a ``ValidationError`` naming the
problem. Unknown fields are ignored: a producer may add fields without breaking us.

Timestamps stay the text the producer wrote; :func:`instant_of` reads one as an
:data:`Instant` at full precision (msgspec's own ``datetime`` keeps microseconds
only, and cannot hold every UTC instant of the years 0001-9999 once offsets apply).
"""

from __future__ import annotations

import re
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
    "EventKey",
    "Identifier",
    "Instant",
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
    "instant_of",
    "instant_of_datetime",
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
#: RFC 3339 with a ``Z``, ``z`` or ``±hh:mm`` offset and any number of fractional digits.
TIMESTAMP_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
# Checked in ``__post_init__`` (one parse that also yields the instant), and shown in the schema.
Timestamp = Annotated[
    str,
    Meta(
        description=(
            "RFC 3339 with offset (Z, z or ±hh:mm), any number of fractional digits, "
            "years 0001-9999 in UTC"
        ),
        extra_json_schema={"format": "date-time", "pattern": TIMESTAMP_PATTERN},
    ),
]
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


#: A UTC instant: ``(seconds since the Unix epoch, nanoseconds 0-999,999,999)``. Two ints,
#: because nanoseconds over the years 0001-9999 do not fit the 64 bits of msgpack; tuples
#: compare in time order.
Instant = tuple[int, int]
#: The idempotency key of an event, ``(source, event_id)``: a pair, never a joined string, so
#: no two different events share one.
EventKey = tuple[str, str]

_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year; H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


#: First and last second of the years 0001-9999, UTC.
_MIN_SECONDS = _days_from_civil(1, 1, 1) * 86_400
_MAX_SECONDS = _days_from_civil(10_000, 1, 1) * 86_400 - 1


def _local_seconds(text: str) -> int:
    """Seconds since the epoch of ``YYYY-MM-DDTHH:MM:SS`` read as UTC; ValueError for an
    impossible date or time."""
    y, mo, d = int(text[0:4]), int(text[5:7]), int(text[8:10])
    h, mi, sec = int(text[11:13]), int(text[14:16]), int(text[17:19])
    leap = mo == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if not (1 <= mo <= 12 and 1 <= d <= _DAYS_IN_MONTH[mo] + leap) or h > 23 or mi > 59 or sec > 59:
        raise ValueError(text)
    return _days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec


def _offset_seconds(text: str) -> int:
    """What to add to local time to get UTC, for ``Z``, ``z`` or ``±hh:mm``."""
    if text in ("Z", "z"):
        return 0
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError(text)
    offset = hours * 3600 + minutes * 60
    return -offset if text[0] == "+" else offset


#: Date-and-time parts (``YYYY-MM-DDTHH:MM:SS``) already found valid, and their seconds:
#: events of one second share one. Emptied when full.
_LOCALS: dict[str, int] = {}
#: ``±hh:mm`` offsets already found valid, and what they add to local time.
_ZONES: dict[str, int] = {}
_LOCALS_MAX = 4096


#: Longest timestamp text kept in the cache (nanoseconds and an offset take 35 characters;
#: a longer fraction is valid but rare, and must not fill memory).
_CACHED_TEXT = 48
#: Instants of timestamps read lately. More than a bulk message's events: the core reads
#: again the instants that decoding the whole message just checked. Emptied when full.
_INSTANTS: dict[str, Instant] = {}
_INSTANTS_MAX = 4 * MAX_BULK


def instant_of(text: str) -> Instant:
    """The UTC instant of an RFC 3339 timestamp, to the nanosecond (further digits truncated).

    Raises ValueError for anything else: another offset form (``+0530``), an impossible date
    or time, or an instant outside the years 0001-9999 once converted to UTC. Cached: a bulk
    export repeats its ``as_of``, and the core reads the instant of a decoded event again.
    """
    found = _INSTANTS.get(text)
    if found is None:
        found = _instant(text)
        if len(text) <= _CACHED_TEXT:
            if len(_INSTANTS) >= _INSTANTS_MAX:
                _INSTANTS.clear()
            _INSTANTS[text] = found
    return found


#: Fractions of a second already read (``".230"``), in nanoseconds: ``int()`` of text costs
#: more than the rest of the short path. Emptied when full.
_FRACTIONS: dict[str, int] = {"": 0}
_FRACTIONS_MAX = 4096


def _instant(text: str) -> Instant:
    """:func:`instant_of` without its cache: a short path for the parts seen before, else
    the full check."""
    local = _LOCALS.get(text[:19])  # only ever holds ASCII parts that passed the full check
    if local is not None:
        offset: int | None
        if text[-1] in "Zz":
            offset, fraction = 0, text[19:-1]
        else:
            offset, fraction = _ZONES.get(text[-6:]), text[19:-6]
        if offset is not None:
            nanos = _FRACTIONS.get(fraction)
            if nanos is None:
                nanos = _nanos(fraction)
            if nanos is not None:
                seconds = local + offset
                if _MIN_SECONDS <= seconds <= _MAX_SECONDS:
                    return (seconds, nanos)
    return _checked_instant(text)


def _nanos(fraction: str) -> int | None:
    """Nanoseconds of a fraction ``.d...`` (digits past the ninth truncated); None if it is
    not one."""
    digits = fraction[1:]
    if fraction[:1] != "." or not digits or not digits.isascii() or not digits.isdigit():
        return None
    nanos = int(digits[:9].ljust(9, "0"))
    if len(fraction) <= 10:
        if len(_FRACTIONS) >= _FRACTIONS_MAX:
            _FRACTIONS.clear()
            _FRACTIONS[""] = 0
        _FRACTIONS[fraction] = nanos
    return nanos


def _checked_instant(text: str) -> Instant:
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not an RFC 3339 timestamp with an offset of Z, z or ±hh:mm"
        )
    fraction, zone = match.groups()
    try:
        local, offset = _local_seconds(text[:19]), _offset_seconds(zone)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid date, time and offset") from None
    seconds = local + offset
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise ValueError(f"{text!r} is outside the years 0001-9999 once converted to UTC")
    if len(_LOCALS) >= _LOCALS_MAX:
        _LOCALS.clear()
    _LOCALS[text[:19]] = local
    if len(zone) == 6:
        _ZONES[zone] = offset
    return (seconds, int(fraction[1:10].ljust(9, "0")) if fraction else 0)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def instant_of_datetime(moment: datetime) -> Instant:
    """The instant of an aware datetime, exactly (to its microsecond)."""
    whole, rest = divmod(moment - _EPOCH, _SECOND)
    return (whole, rest.microseconds * 1000)


def _check_time(text: str, field: str) -> None:
    """Check a timestamp of a decoded event (the message names the field) and cache it."""
    try:
        found = _instant(text)
    except ValueError as exc:
        raise ValueError(f"{exc} - at `$.{field}`") from None
    if len(text) <= _CACHED_TEXT:
        if len(_INSTANTS) >= _INSTANTS_MAX:
            _INSTANTS.clear()
        _INSTANTS[text] = found


def _distinct(lines: list[object] | None, event: str) -> None:
    if not lines:
        return
    ids = [getattr(line, "line_id") for line in lines]  # noqa: B009
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{event} lists line_id {dup!r} more than once - at `$.lines`")


class EventBase(msgspec.Struct, kw_only=True, frozen=True, tag_field="type", gc=False):
    """The envelope every event carries."""

    schema: Literal[1]
    event_id: EventId
    occurred_at: Timestamp
    source: Source
    correlation_id: CorrelationId | None = None

    def __post_init__(self) -> None:
        if self.occurred_at not in _INSTANTS:
            _check_time(self.occurred_at, "occurred_at")


# --- stock (topic stock, key sku) -------------------------------------------------


class StockSnapshot(EventBase, frozen=True, tag="stock.snapshot"):
    """An absolute physical count of one SKU at one node, as of a moment."""

    sku: Identifier
    node: Identifier
    on_hand: NonNegative
    as_of: Timestamp

    def __post_init__(self) -> None:
        # Both checks here, not through super(): this runs for every event of an export.
        if self.occurred_at not in _INSTANTS:
            _check_time(self.occurred_at, "occurred_at")
        if self.as_of not in _INSTANTS:
            _check_time(self.as_of, "as_of")


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


class CreatedLine(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One line of a new order: reserves ``qty`` at ``node`` or against the channel."""

    line_id: Identifier
    sku: Identifier
    qty: Positive
    node: Identifier | None = None


class AllocatedLine(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """Moves a line's open reservation to ``node``."""

    line_id: Identifier
    node: Identifier


class QtyLine(msgspec.Struct, kw_only=True, frozen=True, gc=False):
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


class AuthorizedLine(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """A line a customer may send back."""

    line_id: Identifier
    sku: Identifier
    qty: Positive


class ReceivedLine(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """A returned quantity received at a node; ``sku`` may be left out for authorized lines."""

    line_id: Identifier
    qty: Positive
    sku: Identifier | None = None


class InspectedLine(msgspec.Struct, kw_only=True, frozen=True, gc=False):
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
