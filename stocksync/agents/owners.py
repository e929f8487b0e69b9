"""Who owns a dead letter: the team an exception is routed to, from ``[dlq.owners]``.

The owner of a rejected event is found from its ``source`` field: the first
pattern of ``[dlq.owners]`` (in file order) that matches it, as a glob
(:func:`fnmatch.fnmatchcase`: ``*``, ``?``, ``[...]``, case-sensitive), names
the team. When none matches, or the event has no readable ``source`` (it was
not JSON, not an object, or its ``source`` is not a string), the source topic
decides (``[dlq.default_owners]``): stock -> ``erp``, orders -> ``commerce``,
returns -> ``returns`` unless configured otherwise. The reason plays no part:
whoever sends an event is the one who can fix it, whatever is wrong with it.
"""

from __future__ import annotations

import fnmatch
from typing import Final

import msgspec

from stocksync.config.settings import DlqSettings

__all__ = ["Owners", "source_of"]

#: Distinct sources remembered; past that the memo starts again (sources are few).
_MEMO_MAX: Final = 4096


class _Source(msgspec.Struct):
    """Only the ``source`` of an event, whatever else it holds."""

    source: str | None = None


_source_decoder = msgspec.json.Decoder(_Source)


def source_of(raw: bytes) -> str | None:
    """The ``source`` of an event's bytes, None when they do not hold a string one."""
    try:
        return _source_decoder.decode(raw).source
    except (msgspec.DecodeError, RecursionError):
        return None


class Owners:
    """Finds the owning team of a rejected event from its ``source`` and topic kind."""

    def __init__(self, settings: DlqSettings | None = None) -> None:
        dlq = settings or DlqSettings()
        self._patterns = list(dlq.owners.items())
        defaults = dlq.default_owners
        self._by_kind: dict[str, str] = {
            "stock": defaults.stock,
            "orders": defaults.orders,
            "returns": defaults.returns,
        }
        self._memo: dict[str, str | None] = {}

    def _matched(self, source: str) -> str | None:
        if source in self._memo:
            return self._memo[source]
        team = next(
            (team for pattern, team in self._patterns if fnmatch.fnmatchcase(source, pattern)),
            None,
        )
        if len(self._memo) >= _MEMO_MAX:
            self._memo.clear()
        self._memo[source] = team
        return team

    def of(self, kind: str, source: str | None) -> str:
        """The team owning a rejected event of topic ``kind`` sent by ``source``."""
        if source is not None and self._patterns:
            team = self._matched(source)
            if team is not None:
                return team
        return self._by_kind.get(kind, self._by_kind["stock"])

    def of_raw(self, kind: str, raw: bytes, source: str | None = None) -> str:
        """Like :meth:`of`, reading ``source`` from the event's bytes unless given."""
        if source is None and self._patterns:
            source = source_of(raw)
        return self.of(kind, source)
