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

from collections.abc import Iterable, Sequence

from stocksync.codecs.holds import HeldLine, HoldStatus, StoredLine

__all__ = [
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

