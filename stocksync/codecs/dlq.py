"""Dead-letter records: what lands on ``{prefix}.dlq`` for every rejected event.

The value is a JSON :class:`DeadLetter`. ``event`` holds the rejected event's
bytes exactly as received (as a string when they were not valid UTF-8 JSON,
base64 in ``event_b64`` when not even UTF-8), so a record can be replayed to its
source topic unchanged. The same facts are also set as Kafka headers
(``reason``, ``source_topic``, ``source_partition``, ``source_offset``,
``index``, ``correlation_id``) for tools that only read headers.
"""

from __future__ import annotations

import msgspec

__all__ = ["DeadLetter", "dead_letter_decoder", "dead_letter_encoder"]


class DeadLetter(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One rejected event, whole, with why and where it came from."""

    reason: str
    message: str
    topic: str
    partition: int
    offset: int
    #: Position in a bulk message; absent for a single-event message.
    index: int | None = None
    key: str | None = None
    correlation_id: str | None = None
    #: When it was rejected, RFC 3339 UTC.
    rejected_at: str
    #: The event as received, when it was valid JSON (embedded as JSON).
    event: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    #: The event as received, as text, when it was not valid JSON.
    event_text: str | None = None
    #: The event as received, base64, when it was not even UTF-8.
    event_b64: str | None = None


dead_letter_encoder = msgspec.json.Encoder()
dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
