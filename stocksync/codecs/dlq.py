"""Dead-letter records: what lands on ``{prefix}.dlq`` for every rejected event.

The value is a JSON :class:`DeadLetter`. ``event`` holds the rejected event's
bytes exactly as received (as a string when they were not valid UTF-8 JSON,
base64 in ``event_b64`` when not even UTF-8), so a record can be replayed to its
source topic unchanged. The same facts are also set as Kafka headers
(``reason``, ``source_topic``, ``source_partition``, ``source_offset``,
``index``, ``correlation_id``, ``owner``) for tools that only read headers.

``owner`` is the team the exception is routed to (``[dlq.owners]``, see
:mod:`stocksync.agents.owners`). Records written before owners existed have
none and read as :data:`UNOWNED`.

A record that would be larger than the broker accepts is sent **truncated**
(``truncated`` true): it keeps the reason, the location, the key and the
correlation id (each cut to their first :data:`FIELD_MAX` characters when
longer, as is ``message``), the first :data:`HEAD_BYTES` bytes of the value in
``event_text`` or ``event_b64`` (whichever is smaller encoded; ``event`` is
never set, since a cut JSON value is no JSON), and the SHA-256 and length of
the whole value in ``event_sha256`` and ``event_length``. Such a record
cannot be replayed: the original is on the source topic at the location given.
Fields only ever grow at the end, with defaults, so a record that is not
truncated is byte for byte what it was before they existed.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = [
    "FIELD_MAX",
    "HEAD_BYTES",
    "UNOWNED",
    "DeadLetter",
    "dead_letter_decoder",
    "dead_letter_encoder",
    "owner_of",
]

#: Bytes of the value a truncated record keeps (at most; fewer on a very small broker limit).
HEAD_BYTES: Final = 64 * 1024
#: Characters a truncated record keeps of its key, correlation id and message.
FIELD_MAX: Final = 1024
#: The owner of a record that names none (written before owners existed).
UNOWNED: Final = "unowned"


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
    #: True when the record holds only the first bytes of the value (see the module
    #: docstring): ``event_text``/``event_b64`` are a head, ``key``, ``correlation_id``
    #: and ``message`` may be cut.
    truncated: bool = False
    #: Lowercase hex SHA-256 of the whole value, set when ``truncated``.
    event_sha256: str | None = None
    #: Length in bytes of the whole value, set when ``truncated``.
    event_length: int | None = None
    #: The team that owns the exception (``erp``, ``warehouse``, ``commerce``, ``returns``,
    #: ``finance``); absent in records written before owners existed.
    owner: str | None = None


def owner_of(record: DeadLetter) -> str:
    """The record's owner, :data:`UNOWNED` when it names none."""
    return record.owner or UNOWNED


dead_letter_encoder = msgspec.json.Encoder()
dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
