"""Stopping background tasks for certain.

On Python 3.11 a cancellation that arrives while a timeout inside the task fires can
come out as a ``TimeoutError`` (redis-py turns it into its own ``TimeoutError``), which
a loop that survives Redis errors then swallows: the task goes on, still marked as
cancelling, and whoever awaits it waits for ever. :func:`cancel_and_wait` cancels again
until the task has ended, so a stop is never hung by that race.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

#: How long one cancellation is given before the next is sent.
RETRY_S = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again as needed.

    Their results and exceptions are dropped: they were told to stop.
    """
    pending = {task for task in tasks if not task.done()}
    attempt = 0
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RETRY_S)
        attempt += 1
        if pending and attempt == 1:
            log.debug("tasks still running after a cancellation, cancelling again: %s",
                      ", ".join(task.get_name() for task in pending))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
