"""Adjustments to mode (mode-streaming), the service framework under Faust.

- :func:`wait_first_in_place`: a ``Service.wait_first`` that runs the first
  step of its first coroutine in place and only hands a coroutine that has to
  wait to mode's own ``wait_first``; it reads mode's private ``_stopped`` and
  ``_crashed`` events.
- :class:`StopsWhenCrashed`: a mixin for ``mode.Worker`` that hears about a
  crash through the private ``Service._crash`` and calls ``on_crashed``.

Written for mode-streaming 0.7.x; on another version both stand down (mode's
stock ``wait_first``; a crashed worker then keeps the process alive until it
is stopped, as stock Faust does).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from mode.services import WaitResults

from stocksync.compat import supported

__all__ = [
    "ACTIVE",
    "StopsWhenCrashed",
    "WaitResults",
    "check",
    "start_in_place",
    "wait_first_in_place",
]

DISTRIBUTION = "mode-streaming"
LOWEST = "0.7.1"
BELOW = "0.8"


def check() -> bool:
    """Tell whether the installed mode is one these adjustments were written for (logs if not)."""
    return supported(
        DISTRIBUTION,
        LOWEST,
        BELOW,
        what="every message goes through mode's wait_first, with four Tasks; "
        "a crashed worker no longer stops itself",
    )


#: Whether the adjustments are in force (decided once, at import).
ACTIVE = check()


class _Resumed:
    """An awaitable that carries on a coroutine already run up to its first suspension."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                sent = yield pending
            except BaseException as exc:  # cancellation included: the coroutine handles it
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def wait_first_in_place(
    service: Any,
    coros: tuple[Any, ...],
    timeout: Any,
    stock: Callable[..., Awaitable[WaitResults]],
    *,
    suspended: Callable[[], bool] = lambda: False,
) -> WaitResults:
    """``service.wait_first(*coros, timeout=timeout)``, without Tasks when nothing waits.

    ``stock`` is mode's ``wait_first`` bound to ``service`` (``super().wait_first``);
    it finishes any coroutine that has to wait, where it stands, racing the same
    events. ``suspended`` tells whether the caller's flow is suspended (then the
    stock path is taken from the start).
    """
    done, rest = start_in_place(service, coros, timeout, suspended())
    if done is not None:
        return done
    return await stock(*rest, timeout=timeout)


def start_in_place(
    service: Any, coros: tuple[Any, ...], timeout: Any, suspended: bool
) -> tuple[WaitResults | None, tuple[Any, ...]]:
    """The step :func:`wait_first_in_place` takes before any waiting, for a caller that
    inlines it (the consumer runs it for every message): ``(results, ())`` when the first
    coroutine finished in place, else ``(None, coroutines)`` to hand to mode's
    ``wait_first`` (the first one resumed where it stands, or all as given)."""
    first = coros[0] if coros else None
    if (
        not ACTIVE
        or suspended
        or timeout is not None
        or not inspect.iscoroutine(first)
        or service._stopped.is_set()
        or service._crashed.is_set()
    ):
        return None, coros
    try:
        pending = first.send(None)
    except BaseException as exc:
        for other in coros[1:]:
            if inspect.iscoroutine(other):
                other.close()  # never started: nothing to cancel, no warning
        if isinstance(exc, StopIteration):
            return WaitResults([first], [exc.value], False), ()
        raise
    return None, (_Resumed(first, pending), *coros[1:])


class StopsWhenCrashed:
    """Mixin for a ``mode.Worker``: calls :meth:`on_crashed` after mode records a crash."""

    def on_crashed(self, reason: BaseException) -> None:
        """Called once mode has marked the service crashed (override it)."""

    def _crash(self, reason: BaseException, *args: Any, **kwargs: Any) -> None:
        super()._crash(reason, *args, **kwargs)  # type: ignore[misc]
        if ACTIVE:
            self.on_crashed(reason)
