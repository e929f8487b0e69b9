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

__all__ = ["FormReader"]

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
