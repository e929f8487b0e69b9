"""Holds: the bodies of ``/v1/holds`` and the stored forms of a hold.

A hold is stored twice over, in two shapes (layout in
:mod:`stocksync.store.holds`): the hold itself, keyed by ``hold_id``
(its request, status, expiry and :class:`StoredLine` list, what ``GET
/v1/holds/{hold_id}`` answers from), and one line per SKU, kept with the SKU
(:class:`HeldLine`), which is what availability subtracts. Every change to a
SKU's lines publishes :class:`HeldDelta` on the change stream the API follows:
the hold version before and after it, the lines it added or updated and the
hold ids it removed, so a change costs what it changed, not the SKU's every
line. :class:`HeldSnapshot` (the hold version and every line) is what a load
reads, and what the change entries of the code before deltas carried: a
follower takes both (:func:`decode_held`). The two shapes are disjoint, so a
follower of that older code rejects a delta loudly (an invalid entry, counted
and logged) instead of misreading it. Stored forms are msgpack arrays written
by Lua (``cmsgpack``); they only grow at the end.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from stocksync.codecs.events import Identifier

__all__ = [
    "ExtendRequest",
    "HeldDelta",
    "HeldLine",
    "HeldSnapshot",
    "Hold",
    "HoldLine",
    "HoldLineRequest",
    "HoldRequest",
    "HoldStatus",
    "InsufficientBody",
    "InsufficientDetail",
    "ShortLine",
    "StoredLine",
    "decode_held",
    "hold_encoder",
    "snapshot_decoder",
    "stored_lines_decoder",
]

HoldStatus = Literal["held", "partial", "released", "expired", "converted"]
Quantity = Annotated[int, Meta(gt=0, le=1_000_000_000)]
Ttl = Annotated[int, Meta(ge=1, description="seconds, at most api.holds.max_ttl_seconds")]


class _Request(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Request bodies reject unknown fields."""


class HoldLineRequest(_Request, frozen=True):
    """One line of ``POST /v1/holds``: a SKU and how many to hold."""

    sku: Identifier
    qty: Quantity


class HoldRequest(_Request, frozen=True):
    """``POST /v1/holds``: ``hold_id`` is the client's idempotency key."""

    hold_id: Identifier
    lines: Annotated[list[HoldLineRequest], Meta(min_length=1)]
    channel: Identifier | None = None
    ttl_seconds: Ttl | None = None
    partial: bool = False


class ExtendRequest(_Request, frozen=True):
    """``POST /v1/holds/{hold_id}/extend``: ``expires_at`` becomes now + ``ttl_seconds``."""

    ttl_seconds: Ttl


class HoldLine(msgspec.Struct, kw_only=True, frozen=True):
    """One line of a hold as answered: what was asked and what is held."""

    sku: str
    requested: int
    held: int


class Hold(msgspec.Struct, kw_only=True, frozen=True):
    """A hold as every ``/v1/holds`` endpoint answers it."""

    hold_id: str
    channel: str
    status: HoldStatus
    expires_at: str
    lines: list[HoldLine]


class ShortLine(msgspec.Struct, kw_only=True, frozen=True):
    """A line an all-or-nothing hold could not have: what the channel had available."""

    sku: str
    requested: int
    available: int


class InsufficientDetail(msgspec.Struct, kw_only=True, frozen=True):
    """The error object of ``409 insufficient_stock``: the usual two fields and the lines."""

    code: str
    message: str
    lines: list[ShortLine]


class InsufficientBody(msgspec.Struct, kw_only=True, frozen=True):
    """``{"error": {"code": "insufficient_stock", "message": ..., "lines": [...]}}``."""

    error: InsufficientDetail


class StoredLine(msgspec.Struct, array_like=True, frozen=True):
    """A line as the hold keeps it: ``[sku, requested, held]``."""

    sku: str
    requested: int
    held: int


class HeldLine(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One active line of a SKU: ``[hold_id, channel, qty, expires_ms]``."""

    hold_id: str
    channel: str
    qty: int
    #: Milliseconds since the epoch (Redis time) at which the line stops counting.
    expires_ms: int


class HeldSnapshot(msgspec.Struct, array_like=True, frozen=True):
    """A SKU's lines after a change: ``[hold_version, lines]``; the version only grows."""

    version: int
    lines: list[HeldLine]


class HeldDelta(msgspec.Struct, array_like=True, frozen=True):
    """One change of a SKU's lines: ``[before, after, upserts, removed]``.

    ``before`` and ``after`` are the SKU's hold version before and after the change
    (``after - before`` changes: each line added, updated or removed, pruned expired
    lines included); ``upserts`` the lines added or updated (a new expiry) in full;
    ``removed`` the hold ids of the lines deleted.
    """

    before: int
    after: int
    upserts: list[HeldLine]
    removed: list[str]


hold_encoder = msgspec.json.Encoder()
snapshot_decoder = msgspec.msgpack.Decoder(HeldSnapshot)
delta_decoder = msgspec.msgpack.Decoder(HeldDelta)


def decode_held(raw: bytes) -> HeldDelta | HeldSnapshot:
    """A change entry's ``held`` field: a delta, or the snapshot older writers published."""
    try:
        return delta_decoder.decode(raw)
    except msgspec.ValidationError:
        return snapshot_decoder.decode(raw)
stored_lines_decoder = msgspec.msgpack.Decoder(list[StoredLine])
