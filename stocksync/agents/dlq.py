"""Building dead-letter records for rejected events."""

from __future__ import annotations

import base64

import msgspec

from stocksync.codecs.dlq import DeadLetter, dead_letter_encoder
from stocksync.readmodel.core import format_millis

__all__ = ["DeadLetterOut", "dead_letter"]

_json = msgspec.json.Decoder()


class DeadLetterOut(msgspec.Struct, frozen=True):
    """A dead-letter message ready to send: key, value and headers."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def _embed(raw: bytes) -> dict[str, object]:
    try:
        _json.decode(raw)
    except msgspec.DecodeError:
        try:
            return {"event_text": raw.decode("utf-8")}
        except UnicodeDecodeError:
            return {"event_b64": base64.b64encode(raw).decode("ascii")}
    return {"event": msgspec.Raw(raw)}


def dead_letter(
    *,
    reason: str,
    message: str,
    topic: str,
    partition: int,
    offset: int,
    index: int | None,
    key: bytes | None,
    correlation_id: str | None,
    raw: bytes,
    now_ms: int,
) -> DeadLetterOut:
    """The dead-letter message of one rejected event, whole, with why and where."""
    text_key = key.decode("utf-8", "replace") if key is not None else None
    record = DeadLetter(
        reason=reason,
        message=message,
        topic=topic,
        partition=partition,
        offset=offset,
        index=index,
        key=text_key,
        correlation_id=correlation_id,
        rejected_at=format_millis(now_ms),
        **_embed(raw),  # type: ignore[arg-type]
    )
    headers = [
        ("reason", reason.encode()),
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
    ]
    if index is not None:
        headers.append(("index", str(index).encode()))
    if correlation_id:
        headers.append(("correlation_id", correlation_id.encode()))
    return DeadLetterOut(key=key, value=dead_letter_encoder.encode(record), headers=headers)
