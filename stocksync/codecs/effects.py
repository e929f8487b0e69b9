"""Effects: what translators send to the applier, one SKU each, on the effects topic.

An effect is the per-SKU consequence of one valid source event. Each carries a
deterministic id derived from where its event came from: ``src`` names the
source topic and partition (``"orders/3"``), and ``(ofs, idx, seq)`` are the
source offset, the index of the event in its (bulk) message and the number of
the effect within that event. For one SKU the applier keeps, per ``src``, the
highest id applied (a watermark) and skips anything at or below it, which makes
redelivery and re-translation after a crash harmless.

Stock effects also carry ``eid`` (``source`` and ``event_id``) because stock
events reach the applier without passing any per-key state, so (``source``,
``event_id``) de-duplication of them happens there; order and return events
are de-duplicated by their translator and carry ``eid=None``.

Effects travel as msgpack in :class:`EffectBatch` messages, array-like to keep
them small.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "Adjust",
    "Effect",
    "EffectBase",
    "EffectBatch",
    "Policy",
    "Quarantine",
    "Reserve",
    "Snapshot",
    "batch_decoder",
    "batch_encoder",
]


class EffectBase(msgspec.Struct, frozen=True, array_like=True, tag_field="k"):
    """Identity and tracing fields every effect carries."""

    sku: str
    src: str
    ofs: int
    idx: int
    seq: int
    #: ``source`` + "\\x1f" + ``event_id`` for events de-duplicated by the applier, else None.
    eid: str | None
    #: The event's ``occurred_at`` in microseconds since the epoch (UTC).
    at: int
    #: Milliseconds since the epoch when the source message was produced (freshness).
    produced: int
    cid: str | None


class Snapshot(EffectBase, frozen=True, tag="snap"):
    """Physical count ``on_hand`` at ``node`` as of ``as_of`` (µs)."""

    node: str
    on_hand: int
    as_of: int


class Adjust(EffectBase, frozen=True, tag="phys"):
    """A physical change of ``delta`` at ``node`` that happened at ``at``."""

    node: str
    delta: int


class Reserve(EffectBase, frozen=True, tag="resv"):
    """A change of open reservations at ``node``, or of unallocated demand on ``channel``."""

    node: str | None
    channel: str | None
    qty: int
    #: The checkout hold whose line of this SKU this reservation takes over, if any.
    hold: str | None = None


class Policy(EffectBase, frozen=True, tag="pol"):
    """Safety stock ``safety_stock`` at ``node``, as set at ``at``."""

    node: str
    safety_stock: int


class Quarantine(EffectBase, frozen=True, tag="quar"):
    """Returned units received into, or inspected out of, quarantine at ``node``."""

    node: str
    received: int
    inspected: int


Effect = Snapshot | Adjust | Reserve | Policy | Quarantine


class EffectBatch(msgspec.Struct, frozen=True, array_like=True):
    """One message on the effects topic: effects in source order, all for one partition."""

    effects: list[Effect]


batch_encoder = msgspec.msgpack.Encoder()
batch_decoder = msgspec.msgpack.Decoder(EffectBatch)
