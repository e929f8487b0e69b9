"""Reading a stored or sent form that changed: the current form first, else the previous one.

Effects wait in a topic and positions in Redis across an upgrade, so a reader of a
new form meets bytes of the form before it. Each change of a form is made so that
the new decoder rejects every old value whose meaning changed (a time that was an
integer is now an array, a key that was a string is now a pair); a
:class:`FormReader` then decodes it with the previous form's Structs and converts
it, so nothing old is misread, silently or otherwise. Golden-bytes tests pin both forms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from stocksync.codecs.events import EventKey, Instant

__all__ = ["FormReader", "instant_of_micros", "key_of_joined"]

T = TypeVar("T")
P = TypeVar("P")


class FormReader(Generic[T, P]):
    """A msgpack decoder of the current form that falls back to the previous one, upgraded."""

    __slots__ = ("_current", "_previous", "_upgrade")

    def __init__(self, current: type[T], previous: type[P], upgrade: Callable[[P], T]) -> None:
        self._current = msgspec.msgpack.Decoder(current)
        self._previous = msgspec.msgpack.Decoder(previous)
        self._upgrade = upgrade

    def decode(self, data: bytes) -> T:
        """The value of ``data``, in the current form whichever form it was written in."""
        try:
            return self._current.decode(data)
        except msgspec.ValidationError as exc:
            try:
                old = self._previous.decode(data)
            except msgspec.DecodeError:
                raise exc from None
            return self._upgrade(old)


# --- what form 1 wrote, in the terms of form 2 ---------------------------------------------


def instant_of_micros(micros: int) -> Instant:
    """The instant of a form 1 time (µs since the epoch)."""
    seconds, rest = divmod(micros, 1_000_000)
    return (seconds, rest * 1000)


def key_of_joined(joined: str) -> EventKey:
    """The (``source``, ``event_id``) of a form 1 key ``source + "\\x1f" + event_id``, split
    at its first separator (the same split for effects and stored keys, so they still meet)."""
    source, _, event_id = joined.partition("\x1f")
    return (source, event_id)
