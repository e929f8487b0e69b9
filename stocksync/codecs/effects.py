"""Effects: what translators send to the applier, one SKU each, on the effects topic.

An effect is the per-SKU consequence of one valid source event. Each carries a
deterministic id derived from where its event came from: ``src`` names the
source topic and partition (``"orders/3"``), and ``(ofs, idx, seq)`` are the
source offset, the index of the event in its (bulk) message and the number of
the effect within that event. For one SKU the applier keeps, per ``src``, the
highest id applied (a watermark) and skips anything at or below it, which makes
redelivery and re-translation after a crash harmless.

Stock effects also carry ``eid`` (the pair ``source``, ``event_id``) because stock
events reach the applier without passing any per-key state, so (``source``,
``event_id``) de-duplication of them happens there, and so do the tie-breaks of
snapshots and policies; order and return events are de-duplicated by their
translator and carry ``eid=None``.

Effects travel as msgpack in :class:`EffectBatch` messages, array-like to keep
them small: an effect is an array, its tag then its fields in declaration order
(the base's first). So the form only grows at the end: effects are built by
keyword, a new field goes at the end of each concrete effect (never into the
base, which would shift every subclass's fields) with a default, and
``tests/codecs/test_golden.py`` pins the bytes.

Form history (the previous one is still read, see :mod:`stocksync.codecs.forms`):

1. ``eid`` was ``source + "\\x1f" + event_id``; ``at`` and ``as_of`` were µs integers.
2. (now) ``eid`` is a ``[source, event_id]`` pair; ``at`` and ``as_of`` are
   :data:`~stocksync.codecs.events.Instant` pairs ``[seconds, nanoseconds]``.
   Form 1 effects are rejected by the form 2 decoder (an integer where an array
   is expected) and read as form 1, converted: µs to the same instant,
   ``eid`` split at its first ``\\x1f`` (exactly the split that converts the
   keys of form 1 positions, so copies across the upgrade still meet).
"""

from __future__ import annotations

import msgspec

from stocksync.codecs.events import EventKey, Instant
from stocksync.codecs.forms import FormReader, instant_of_micros, key_of_joined

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


class EffectBase(
    msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag_field="k", gc=False
):
    """Identity and tracing fields every effect carries."""

    sku: str
    src: str
    ofs: int
    idx: int
    seq: int
    #: (``source``, ``event_id``) of events de-duplicated by the applier, else None.
    eid: EventKey | None
    #: The event's ``occurred_at``.
    at: Instant
    #: Milliseconds since the epoch when the source message was produced (freshness).
    produced: int
    cid: str | None


class Snapshot(EffectBase, frozen=True, kw_only=True, tag="snap"):
    """Physical count ``on_hand`` at ``node`` as of ``as_of``."""

    node: str
    on_hand: int
    as_of: Instant


class Adjust(EffectBase, frozen=True, kw_only=True, tag="phys"):
    """A physical change of ``delta`` at ``node`` that happened at ``at``."""

    node: str
    delta: int


class Reserve(EffectBase, frozen=True, kw_only=True, tag="resv"):
    """A change of open reservations at ``node``, or of unallocated demand on ``channel``."""

    node: str | None
    channel: str | None
    qty: int
    #: The checkout hold whose line of this SKU this reservation takes over, if any.
    hold: str | None = None


class Policy(EffectBase, frozen=True, kw_only=True, tag="pol"):
    """Safety stock ``safety_stock`` at ``node``, as set at ``at``."""

    node: str
    safety_stock: int


class Quarantine(EffectBase, frozen=True, kw_only=True, tag="quar"):
    """Returned units received into, or inspected out of, quarantine at ``node``."""

    node: str
    received: int
    inspected: int


Effect = Snapshot | Adjust | Reserve | Policy | Quarantine


class EffectBatch(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One message on the effects topic: effects in source order, all for one partition."""

    effects: list[Effect]


# --- form 1, read for the effects still in the topic after an upgrade ----------------------


class _Base1(msgspec.Struct, frozen=True, array_like=True, tag_field="k"):
    sku: str
    src: str
    ofs: int
    idx: int
    seq: int
    eid: str | None
    at: int
    produced: int
    cid: str | None


class _Snapshot1(_Base1, frozen=True, tag="snap"):
    node: str
    on_hand: int
    as_of: int


class _Adjust1(_Base1, frozen=True, tag="phys"):
    node: str
    delta: int


class _Reserve1(_Base1, frozen=True, tag="resv"):
    node: str | None
    channel: str | None
    qty: int


class _Policy1(_Base1, frozen=True, tag="pol"):
    node: str
    safety_stock: int


class _Quarantine1(_Base1, frozen=True, tag="quar"):
    node: str
    received: int
    inspected: int


class _Batch1(msgspec.Struct, frozen=True, array_like=True):
    effects: list[_Snapshot1 | _Adjust1 | _Reserve1 | _Policy1 | _Quarantine1]


_FORM2 = {
    _Snapshot1: Snapshot, _Adjust1: Adjust, _Reserve1: Reserve, _Policy1: Policy,
    _Quarantine1: Quarantine,
}


def _upgrade(batch: _Batch1) -> EffectBatch:
    effects: list[Effect] = []
    for old in batch.effects:
        fields = msgspec.structs.asdict(old)
        fields["eid"] = None if old.eid is None else key_of_joined(old.eid)
        fields["at"] = instant_of_micros(old.at)
        if isinstance(old, _Snapshot1):
            fields["as_of"] = instant_of_micros(old.as_of)
        effects.append(_FORM2[type(old)](**fields))
    return EffectBatch(effects)


batch_encoder = msgspec.msgpack.Encoder()
#: Decodes an effects message of the current form, or of form 1 (converted).
batch_decoder: FormReader[EffectBatch, _Batch1] = FormReader(EffectBatch, _Batch1, _upgrade)
