"""Decoding source messages: one value in, its valid events and its rejections out.

A value is one JSON event or a bulk JSON array of 1 to :data:`MAX_BULK` events.
A bulk array is split into raw elements first and each element is decoded on
its own, so one bad event never spoils the others; each rejection keeps the
exact bytes of its event for the dead-letter topic.
"""

from __future__ import annotations

import msgspec

from stocksync.codecs.events import MAX_BULK, Event

__all__ = [
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
_any_decoder = msgspec.json.Decoder()


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


def decode_message(value: bytes | None) -> Decoded:
    """Split a message value into valid events and rejections, in array order."""
    if value is None:
        value = b""
    start = value[:1]
    if start.isspace():
        start = value.lstrip()[:1]
    if start != b"[":
        one = _decode_one(value, None)
        if isinstance(one, Rejection):
            return Decoded(events=[], rejections=[one], bulk=False)
        return Decoded(events=[(None, one, value)], rejections=[], bulk=False)
    try:
        elements = _bulk_decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return Decoded(
            events=[],
            rejections=[
                Rejection(
                    reason=Reason.MALFORMED_JSON,
                    message=f"bulk message is not a valid JSON array: {exc}",
                    index=None,
                    raw=value,
                )
            ],
            bulk=True,
        )
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
        one = _decode_one(raw, index)
        if isinstance(one, Rejection):
            rejections.append(one)
        else:
            events.append((index, one, raw))
    return Decoded(events=events, rejections=rejections, bulk=True)
