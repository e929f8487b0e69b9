"""When a (sku, channel) gets a feed message: the contract's rules as pure functions.

No I/O here. A channel is notified on its status, on ``available`` or not at all
(``notify``); a change opens a deadline ``notify_min_interval_ms`` later, at which
the latest figure is compared with the last one published, so changes inside
the interval become one message and a value that came back sends nothing.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from stocksync.codecs.projections import Status
from stocksync.store.feed import Published

__all__ = ["Figure", "Notify", "changed", "due_at"]

Notify = Literal["status", "quantity", "off"]


class Figure(msgspec.Struct, frozen=True, gc=False):
    """What the API serves for one (sku, channel): the part the feed reports."""

    available: int
    status: Status
    version: int


def changed(mode: Notify, last: Published | None, figure: Figure) -> bool:
    """Whether ``figure`` differs from ``last`` in what ``mode`` notifies on."""
    if mode == "off":
        return False
    if last is None:
        return True
    if mode == "status":
        return figure.status != last.status
    return figure.available != last.available


def due_at(changed_ms: int, interval_ms: int, last_sent_ms: int | None) -> int:
    """When a change seen at ``changed_ms`` may be sent: an interval after it and after the last."""
    due = changed_ms + interval_ms
    if last_sent_ms is not None:
        due = max(due, last_sent_ms + interval_ms)
    return due
