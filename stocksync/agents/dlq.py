"""Building dead-letter records for rejected events: whole, or truncated to fit the broker.

A record is sent whole when it fits in ``max_bytes`` (the smallest message the
broker and the producer accept, see :mod:`stocksync.agents.topics`); otherwise
in the truncated form of :mod:`stocksync.codecs.dlq`, shrinking the kept head of
the value further only if even that would not fit (a broker limit far below
the default).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Final

import msgspec

from stocksync.codecs.dlq import FIELD_MAX, HEAD_BYTES, DeadLetter, dead_letter_encoder
from stocksync.readmodel.core import format_millis

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "RECORD_OVERHEAD",
    "DeadLetterOut",
    "cut_text",
    "dead_letter",
    "record_size",
]

#: The message size assumed when nothing else is known (Kafka's producer default).
DEFAULT_MAX_MESSAGE_BYTES: Final = 1_000_000
#: Bytes a Kafka record takes beyond its key, value and header bytes: the record
#: batch header (61), varint lengths and attributes, with a margin.
RECORD_OVERHEAD: Final = 256
#: A head shorter than this is not worth keeping; below it the record keeps no head.
_MIN_HEAD: Final = 64

_json = msgspec.json.Decoder()


class DeadLetterOut(msgspec.Struct, frozen=True):
    """A dead-letter message ready to send: key, value and headers."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    #: Whether the record is the truncated form (the value did not fit whole).
    truncated: bool = False


def record_size(key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]) -> int:
    """An upper bound of the bytes a message takes on the broker (what its limit counts)."""
    size = RECORD_OVERHEAD + len(value) + (len(key) if key is not None else 0)
    for name, header in headers:
        size += 10 + len(name.encode()) + len(header)
    return size


def cut_text(text: str | None, limit: int = FIELD_MAX) -> str | None:
    """``text`` cut to its first ``limit`` characters (None stays None)."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit]


def _embed(raw: bytes) -> dict[str, object]:
    try:
        _json.decode(raw)
    except Exception:
        try:
            return {"event_text": raw.decode("utf-8")}
        except UnicodeDecodeError:
            return {"event_b64": base64.b64encode(raw).decode("ascii")}
    return {"event": msgspec.Raw(raw)}


def _utf8_prefix(head: bytes) -> str | None:
    """``head`` as text, without a character cut at its end; None if it is not UTF-8."""
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data" or exc.start < len(head) - 3:
            return None
        try:
            return head[: exc.start].decode("utf-8")
        except UnicodeDecodeError:
            return None


def _head(head: bytes) -> dict[str, object]:
    """The first bytes of a value as text or base64, whichever is smaller once encoded."""
    if not head:
        return {}
    b64 = base64.b64encode(head).decode("ascii")
    text = _utf8_prefix(head)
    if text is not None and len(dead_letter_encoder.encode(text)) <= len(b64) + 2:
        return {"event_text": text}
    return {"event_b64": b64}


def _headers(
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    index: int | None,
    correlation_id: str | None,
    owner: str | None,
) -> list[tuple[str, bytes]]:
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
    if owner:
        headers.append(("owner", owner.encode()))
    return headers


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
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    owner: str | None = None,
) -> DeadLetterOut:
    """The dead-letter message of one rejected event: whole if it fits in ``max_bytes``.

    ``owner`` is the team it is routed to (:mod:`stocksync.agents.owners`); the worker
    always names one.
    """
    rejected_at = format_millis(now_ms)
    if len(raw) + (len(key) if key is not None else 0) < max_bytes:
        headers = _headers(reason, topic, partition, offset, index, correlation_id, owner)
        record = DeadLetter(
            reason=reason,
            message=message,
            topic=topic,
            partition=partition,
            offset=offset,
            index=index,
            key=key.decode("utf-8", "replace") if key is not None else None,
            correlation_id=correlation_id,
            rejected_at=rejected_at,
            owner=owner,
            **_embed(raw),  # type: ignore[arg-type]
        )
        value = dead_letter_encoder.encode(record)
        if record_size(key, value, headers) <= max_bytes:
            return DeadLetterOut(key=key, value=value, headers=headers)
    return _truncated(
        reason=reason,
        message=message,
        topic=topic,
        partition=partition,
        offset=offset,
        index=index,
        key=key,
        correlation_id=correlation_id,
        raw=raw,
        rejected_at=rejected_at,
        max_bytes=max_bytes,
        owner=owner,
    )


def _truncated(
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
    rejected_at: str,
    max_bytes: int,
    owner: str | None,
) -> DeadLetterOut:
    """The truncated form (see :mod:`stocksync.codecs.dlq`), as large as fits in ``max_bytes``."""
    short_key = key[:FIELD_MAX] if key is not None else None
    cid = cut_text(correlation_id)
    headers = _headers(reason, topic, partition, offset, index, cid, owner)
    digest = hashlib.sha256(raw).hexdigest()
    head = min(HEAD_BYTES, len(raw))
    while True:
        record = DeadLetter(
            reason=reason,
            message=cut_text(message) or "",
            topic=topic,
            partition=partition,
            offset=offset,
            index=index,
            key=short_key.decode("utf-8", "replace") if short_key is not None else None,
            correlation_id=cid,
            rejected_at=rejected_at,
            truncated=True,
            event_sha256=digest,
            event_length=len(raw),
            owner=owner,
            **_head(raw[:head]),  # type: ignore[arg-type]
        )
        value = dead_letter_encoder.encode(record)
        if head == 0 or record_size(short_key, value, headers) <= max_bytes:
            return DeadLetterOut(key=short_key, value=value, headers=headers, truncated=True)
        head = head // 2 if head // 2 >= _MIN_HEAD else 0
