"""Wire forms of the availability feed: ``availability.changed`` and the feed's dead letters.

Both are fixed by the feed contract (``contracts/feed-v1.md``); fields only grow
at the end. :func:`event_id` is the message's deterministic identity: the same
(sku, channel, version) always gives the same id, so a message sent again after
a crash is recognisably the same message.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from stocksync.codecs.projections import Status

__all__ = [
    "SCHEMA",
    "AvailabilityChanged",
    "FeedDeadLetter",
    "changed_decoder",
    "dead_letter_decoder",
    "encode",
    "event_id",
]

#: ``schema`` of every feed message.
SCHEMA: Final = 1


class AvailabilityChanged(msgspec.Struct, kw_only=True, frozen=True,
                          tag_field="type", tag="availability.changed"):
    """One (sku, channel)'s figures as the API serves them at ``version``."""

    schema: int = SCHEMA
    event_id: str
    #: RFC 3339 (ms, UTC): when the change reached the read model.
    occurred_at: str
    sku: str
    channel: str
    available: int
    status: Status
    #: Status of the last message sent for this (sku, channel); absent on the first.
    previous_status: Status | msgspec.UnsetType = msgspec.UNSET
    version: int
    #: Of the event that caused the change, when known.
    correlation_id: str | msgspec.UnsetType = msgspec.UNSET


class FeedDeadLetter(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A webhook delivery given up after its last attempt (``{prefix}.feed.dlq``)."""

    webhook: str
    reason: str
    attempts: int
    #: RFC 3339 (ms, UTC): when the last attempt failed.
    failed_at: str
    delivery_id: str
    messages: list[AvailabilityChanged]
    kind: Literal["webhook.failed"] = "webhook.failed"


def event_id(sku: str, channel: str, version: int) -> str:
    """The deterministic ``event_id`` of (sku, channel, version)."""
    return f"av-{sku}-{channel}-{version}"


_encoder: Final = msgspec.json.Encoder()
changed_decoder: Final = msgspec.json.Decoder(AvailabilityChanged)
dead_letter_decoder: Final = msgspec.json.Decoder(FeedDeadLetter)


def encode(value: AvailabilityChanged | FeedDeadLetter | list[AvailabilityChanged]) -> bytes:
    """JSON bytes of a feed message, a delivery body or a dead letter."""
    return _encoder.encode(value)
