"""Decoding source messages: one value in, its valid events and its rejections out.

A value is one JSON event or a bulk JSON array of 1 to :data:`MAX_BULK` events.
A bulk array is split into raw elements first and each element is decoded on
its own, so one bad event never spoils the others; each rejection keeps the
exact bytes of its event for the dead-letter topic.

A value that is not UTF-8 anywhere, or nests arrays and objects deeper than
:data:`MAX_DEPTH` anywhere (even inside a field that would be ignored), is
unparseable as a whole (contract, "Clarifications (2026-12)"); both are checked
before msgspec sees the bytes, which also keeps its recursive parser far from
Python's recursion limit.
"""

from __future__ import annotations

import re

import msgspec

from stocksync.codecs.events import MAX_BULK, Event

__all__ = [
    "MAX_DEPTH",
    "Decoded",
    "Reason",
    "Rejection",
    "decode_message",
]


class Reason:
    """Stable reason codes of rejected events (the DLQ's ``reason``)."""

    MALFORMED_JSON = "malformed_json"
    NOT_AN_EVENT = "not_an_event"
    BULK_SIZE = "bulk_size"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    INVALID_FIELD = "invalid_field"
    KEY_MISMATCH = "key_mismatch"
    WRONG_TOPIC = "wrong_topic"
    UNKNOWN_ORDER = "unknown_order"
    ORDER_EXISTS = "order_exists"
    UNKNOWN_LINE = "unknown_line"
    UNKNOWN_RMA = "unknown_rma"
    LINE_WITHOUT_SKU = "line_without_sku"
    #: Decoding or translating it raised an unexpected exception (a bug): it costs this
    #: event (or message, when decoding itself failed), never the batch.
    INTERNAL_ERROR = "internal_error"


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """An invalid event: why, where in its message, and its bytes as received."""

    reason: str
    message: str
    #: Position in a bulk array; None for a single-event message.
    index: int | None
    raw: bytes


class Decoded(msgspec.Struct, frozen=True, kw_only=True):
    """The valid events of one message with their indexes, and its rejections."""

    #: ``(index, event, raw bytes)``; index is None for a single-event message.
    events: list[tuple[int | None, Event, bytes]]
    rejections: list[Rejection]
    bulk: bool


_event_decoder = msgspec.json.Decoder(Event)
_bulk_decoder = msgspec.json.Decoder(list[msgspec.Raw])


def _classify(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if text.endswith("at `$.type`") or "missing required field `type`" in text:
        return Reason.UNKNOWN_TYPE
    if text.endswith("at `$.schema`") or "missing required field `schema`" in text:
        return Reason.UNSUPPORTED_SCHEMA
    if text.startswith("Expected `object`") and "at `$" not in text:
        return Reason.NOT_AN_EVENT
    return Reason.INVALID_FIELD


def _decode_one(raw: bytes, index: int | None) -> Event | Rejection:
    try:
        event: Event = _event_decoder.decode(raw)
        return event
    except msgspec.ValidationError as exc:
        return Rejection(reason=_classify(exc), message=str(exc), index=index, raw=raw)
    except msgspec.DecodeError as exc:
        return Rejection(
            reason=Reason.MALFORMED_JSON, message=f"not valid JSON: {exc}", index=index, raw=raw
        )


#: Deepest nesting of arrays and objects a value (or an element of a bulk array) may have.
MAX_DEPTH = 64
#: Every byte but the brackets and the quote: deleted to leave a value's skeleton.
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')
_EMPTY_PAIRS = re.compile(rb"\[\]|\{\}")


def _too_deep(value: bytes) -> bool:
    """True when ``value`` nests deeper than :data:`MAX_DEPTH` (or its brackets do not pair).

    Counting the brackets costs two C scans and settles nearly every value; only one with
    more than ``MAX_DEPTH`` of them is reduced to its skeleton (escapes, then everything but
    brackets and quotes, then strings dropped), whose innermost pairs go one level per pass.
    """
    if value.count(b"[") + value.count(b"{") <= MAX_DEPTH:
        return False
    quoted = value.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    skeleton = b"".join(quoted.split(b'"')[::2])
    for _ in range(MAX_DEPTH):
        if not skeleton:
            return False
        inner = _EMPTY_PAIRS.sub(b"", skeleton)
        if len(inner) == len(skeleton):
            return True
        skeleton = inner
    return bool(skeleton)


_TOO_DEEP = f"not valid JSON: nested deeper than {MAX_DEPTH} levels (or brackets that do not pair)"


def _malformed(value: bytes, message: str, *, bulk: bool) -> Decoded:
    rejection = Rejection(reason=Reason.MALFORMED_JSON, message=message, index=None, raw=value)
    return Decoded(events=[], rejections=[rejection], bulk=bulk)


def decode_message(value: bytes | None) -> Decoded:
    """Split a message value into valid events and rejections, in array order."""
    if value is None:
        value = b""
    start = value[:1]
    if start.isspace():
        start = value.lstrip()[:1]
    bulk = start == b"["
    if not value.isascii():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _malformed(value, f"not valid JSON: not UTF-8 at byte {exc.start}", bulk=bulk)
    if not bulk:
        if _too_deep(value):
            return _malformed(value, _TOO_DEEP, bulk=False)
        one = _decode_one(value, None)
        if isinstance(one, Rejection):
            return Decoded(events=[], rejections=[one], bulk=False)
        return Decoded(events=[(None, one, value)], rejections=[], bulk=False)
    try:
        elements = _bulk_decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _malformed(value, f"bulk message is not a valid JSON array: {exc}", bulk=True)
    except RecursionError:
        # Nested so deep that even splitting it overflows: no element of it can be valid.
        return _malformed(value, _TOO_DEEP, bulk=True)
    if not 1 <= len(elements) <= MAX_BULK:
        return Decoded(
            events=[],
            rejections=[
                Rejection(
                    reason=Reason.BULK_SIZE,
                    message=(
                        f"a bulk message carries 1 to {MAX_BULK} events, this one has "
                        f"{len(elements)}; split it"
                    ),
                    index=None,
                    raw=value,
                )
            ],
            bulk=True,
        )
    events: list[tuple[int | None, Event, bytes]] = []
    rejections: list[Rejection] = []
    for index, element in enumerate(elements):
        raw = bytes(element)
        # Each event as if it had come alone: its own nesting counts, the array's does not.
        if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _too_deep(raw):
            rejections.append(
                Rejection(reason=Reason.MALFORMED_JSON, message=_TOO_DEEP, index=index, raw=raw)
            )
            continue
        one = _decode_one(raw, index)
        if isinstance(one, Rejection):
            rejections.append(one)
        else:
            events.append((index, one, raw))
    return Decoded(events=events, rejections=rejections, bulk=True)
