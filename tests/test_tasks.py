"""cancel_and_wait ends a task even when the task swallows a cancellation."""

from __future__ import annotations

import asyncio

from stocksync.tasks import cancel_and_wait


def test_a_task_that_swallows_a_cancellation_is_still_stopped() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as a timeout racing the cancel turns it into an error

    async def scenario() -> None:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_and_wait([task]), timeout=10)
        assert task.cancelled() and swallowed == 1

    asyncio.run(scenario())


def test_tasks_that_failed_or_ended_are_waited_for_quietly() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    async def scenario() -> None:
        failed = asyncio.create_task(fails())
        ended = asyncio.create_task(asyncio.sleep(0))
        await asyncio.sleep(0.01)
        await cancel_and_wait([failed, ended])
        assert failed.done() and ended.done()

    asyncio.run(scenario())
