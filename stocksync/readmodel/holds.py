"""The arithmetic of checkout holds: what a hold may be granted and what it keeps back.

Pure functions over the stored forms of :mod:`stocksync.codecs.holds`; the
Redis scripts of :mod:`stocksync.store.holds` (scripts in store.scripts) implement the same rules
in Lua, and the tests hold both to an oracle. An active hold counts against
its channel like unallocated demand (api-v1, "What a hold does to
availability")::

    channel available = max(0, pre-hold available - held by active holds)

where the pre-hold figure is what the applier projects (already clamped at 0,
which changes nothing since what is held is never negative).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

import msgspec

from stocksync.codecs.holds import HeldDelta, HeldLine, HeldSnapshot, HoldStatus, StoredLine

__all__ = [
    "HeldLines",
    "available_after_holds",
    "expired_count",
    "fingerprint",
    "grant",
    "grant_all",
    "held_by_channel",
    "hold_status",
    "next_expiry",
    "served_version",
]


def held_by_channel(lines: Iterable[HeldLine], now_ms: int) -> dict[str, int]:
    """Quantity held per channel by the lines still active at ``now_ms``."""
    held: dict[str, int] = {}
    for line in lines:
        if line.expires_ms > now_ms:
            held[line.channel] = held.get(line.channel, 0) + line.qty
    return held


def expired_count(lines: Iterable[HeldLine], now_ms: int) -> int:
    """How many of ``lines`` have stopped counting by ``now_ms``."""
    return sum(1 for line in lines if line.expires_ms <= now_ms)


def next_expiry(lines: Iterable[HeldLine], now_ms: int) -> int | None:
    """The earliest expiry after ``now_ms``, or None when no line is active."""
    future = [line.expires_ms for line in lines if line.expires_ms > now_ms]
    return min(future) if future else None


def available_after_holds(pre_hold: int, held: int) -> int:
    """The channel's available figure once ``held`` is kept back."""
    return max(0, pre_hold - held)


def grant(available: int, qty: int, *, partial: bool) -> int:
    """How much of ``qty`` one line gets: all or nothing, or as much as is available."""
    if qty <= available:
        return qty
    return max(0, available) if partial else 0


def grant_all(
    available: Sequence[int], qty: Sequence[int], *, partial: bool
) -> list[int] | None:
    """Per line, what a hold gets; None when an all-or-nothing hold is refused."""
    granted = [grant(a, q, partial=partial) for a, q in zip(available, qty, strict=True)]
    if not partial and any(g < q for g, q in zip(granted, qty, strict=True)):
        return None
    return granted


def hold_status(lines: Iterable[StoredLine]) -> HoldStatus:
    """``held`` when every line is held in full, else ``partial``."""
    return "held" if all(line.held == line.requested for line in lines) else "partial"


def served_version(version: int, hold_version: int, lines: Iterable[HeldLine], now_ms: int) -> int:
    """The version a reader sees: it grows with the position, every hold change and expiry.

    ``hold_version`` counts the changes Redis made to the SKU's lines, pruning
    of expired lines included; ``lines`` are the ones it kept. A line that has
    expired but is not pruned yet counts as one change already, so a replica
    that sees it expire by its clock and one that later sees it pruned answer
    the same version.
    """
    return version + hold_version + expired_count(lines, now_ms)


def fingerprint(channel: str, lines: Iterable[tuple[str, int]]) -> str:
    """What makes two requests with one ``hold_id`` the same hold: channel and lines."""
    parts = sorted(f"{sku}={qty}" for sku, qty in lines)
    return "\x1f".join([channel, *parts])



class HeldLines(msgspec.Struct, kw_only=True, gc=False):
    """One SKU's hold lines as a follower keeps them: a change costs what it changed.

    Lines by hold id; per channel the sum of the lines still active at
    :attr:`through` (the latest time the lines were looked at, see :meth:`advance`);
    the ids of the lines that expired by then but which Redis has not pruned yet
    (each counts as one change already, see :func:`served_version`); and a heap of
    the active lines' expiries. Equal to the functions above over the same lines:
    ``held`` is :func:`held_by_channel`, ``len(expired)`` :func:`expired_count` and
    :meth:`next_expiry` :func:`next_expiry`, at :attr:`through`.

    A replica keeps one for every SKU that was ever held, so none of it is seen by
    the garbage collector (it can hold no reference cycle): as a plain object with a
    set it was three tracked containers per held SKU, and every full collection of
    an API process walked all of them (tens of milliseconds at 40,000 held SKUs,
    each a pause of every request in flight). Only :attr:`heap`, a list, is tracked.
    """

    #: The hold version of the SKU these lines are at.
    version: int = 0
    lines: dict[str, HeldLine] = {}
    #: Channel -> quantity held by the lines active at ``through``.
    held: dict[str, int] = {}
    #: Hold ids of lines that expired by ``through`` (still in ``lines``); a dict of
    #: None rather than a set, because a dict of strings is not tracked by the collector.
    expired: dict[str, None] = {}
    through: int = 0
    #: (expiry ms, hold id) of the active lines, and of lines since removed or updated
    #: (skipped at the top, see _live_top, or dropped by a compaction).
    heap: list[tuple[int, str]] = []

    @classmethod
    def of(cls, snapshot: HeldSnapshot, now: int) -> HeldLines:
        """The lines of a snapshot, looked at ``now``."""
        lines = cls(version=snapshot.version, through=now)
        for line in snapshot.lines:
            lines._add(line)
        return lines

    def _add(self, line: HeldLine) -> None:
        self.lines[line.hold_id] = line
        if line.expires_ms <= self.through:
            self.expired[line.hold_id] = None
            return
        self.held[line.channel] = self.held.get(line.channel, 0) + line.qty
        heapq.heappush(self.heap, (line.expires_ms, line.hold_id))

    def _remove(self, hold_id: str) -> None:
        line = self.lines.pop(hold_id, None)
        if line is None:
            return
        if hold_id in self.expired:
            del self.expired[hold_id]
            return
        left = self.held[line.channel] - line.qty
        if left:
            self.held[line.channel] = left
        else:
            del self.held[line.channel]
        # Its heap entry stays until it reaches the top (see _live_top) or a compaction.

    def apply(self, delta: HeldDelta, now: int) -> None:
        """Apply a change whose ``before`` is :attr:`version`, then look at ``now``."""
        self.through = max(self.through, now)
        for hold_id in delta.removed:
            self._remove(hold_id)
        for line in delta.upserts:
            self._remove(line.hold_id)
            self._add(line)
        self.version = delta.after
        if len(self.heap) > 2 * len(self.lines) + 64:
            self.heap = [
                (line.expires_ms, hold_id)
                for hold_id, line in self.lines.items()
                if hold_id not in self.expired
            ]
            heapq.heapify(self.heap)
        self.advance(now)

    def _live_top(self) -> tuple[int, str] | None:
        """The heap's earliest entry that is still an active line's expiry."""
        heap = self.heap
        while heap:
            at, hold_id = heap[0]
            line = self.lines.get(hold_id)
            if line is not None and line.expires_ms == at and hold_id not in self.expired:
                return heap[0]
            heapq.heappop(heap)
        return None

    def advance(self, now: int) -> list[HeldLine]:
        """Look at the lines at ``now``: the ones that expired since the last look."""
        ended: list[HeldLine] = []
        if now > self.through:
            self.through = now
        while True:
            top = self._live_top()
            if top is None or top[0] > self.through:
                break
            heapq.heappop(self.heap)
            line = self.lines[top[1]]
            left = self.held[line.channel] - line.qty
            if left:
                self.held[line.channel] = left
            else:
                del self.held[line.channel]
            self.expired[line.hold_id] = None
            ended.append(line)
        return ended

    def next_expiry(self) -> int | None:
        """The earliest expiry of an active line, or None."""
        top = self._live_top()
        return None if top is None else top[0]

    def served_version(self, version: int) -> int:
        """:func:`served_version` of a position ``version`` with these lines, at ``through``."""
        return version + self.version + len(self.expired)
