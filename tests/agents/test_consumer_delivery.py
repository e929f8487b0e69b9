"""The worker's consumer hands each message to the conductor without Tasks when it can.

Faust's fetch loop calls ``consumer.wait_first(callback(message),
suspend_flow.wait())`` per message; these tests drive that call the same way
on the real consumer class of stocksync's app.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from stocksync.agents.app import create_app
from stocksync.config.settings import Settings

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a new loop that is also the thread's current loop, as Faust expects."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, 10))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)


def consumer_of(tmp_path: Path) -> Any:
    """The consumer of stocksync's app, never started (no broker is needed)."""
    app = create_app(Settings(broker="kafka://127.0.0.1:9"), datadir=tmp_path)
    consumer = app.consumer
    # The consumer thread made a loop of its own, which only its (skipped) start would close.
    asyncio.get_running_loop().call_soon(consumer._thread.thread_loop.close)
    return consumer


def tasks_now() -> int:
    return len(asyncio.all_tasks())


def test_a_callback_that_never_waits_runs_in_place_without_tasks(tmp_path: Path) -> None:
    async def scenario() -> tuple[Any, int, int]:
        consumer = consumer_of(tmp_path)
        seen: list[int] = []
        created: list[int] = []

        async def callback(value: int) -> int:
            seen.append(value)
            created.append(tasks_now())
            return value * 2

        result = await consumer.wait_first(callback(21), consumer.suspend_flow.wait())
        return result, seen, created[0] - tasks_now()

    result, seen, extra_tasks = run(scenario())
    assert seen == [21]
    assert result.results == [42] and not result.stopped
    assert extra_tasks == 0


def test_a_callback_that_waits_is_finished_by_faust_wait_first(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        consumer = consumer_of(tmp_path)
        steps: list[str] = []
        gate = asyncio.Event()

        async def callback() -> None:
            steps.append("started")
            await gate.wait()
            await asyncio.sleep(0)
            steps.append("finished")

        asyncio.get_running_loop().call_later(0.05, gate.set)
        await consumer.wait_first(callback(), consumer.suspend_flow.wait())
        return steps

    assert run(scenario()) == ["started", "finished"]


def test_an_error_in_the_callback_reaches_the_fetch_loop(tmp_path: Path) -> None:
    async def scenario() -> None:
        consumer = consumer_of(tmp_path)

        async def immediate() -> None:
            raise ValueError("at once")

        async def later() -> None:
            await asyncio.sleep(0.01)
            raise KeyError("after waiting")

        with pytest.raises(ValueError, match="at once"):
            await consumer.wait_first(immediate(), consumer.suspend_flow.wait())
        with pytest.raises(KeyError, match="after waiting"):
            await consumer.wait_first(later(), consumer.suspend_flow.wait())

    run(scenario())


def test_suspended_flow_abandons_a_waiting_callback_as_faust_does(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], bool]:
        consumer = consumer_of(tmp_path)
        steps: list[str] = []

        async def callback() -> None:
            steps.append("started")
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                steps.append("cancelled")
                raise
            steps.append("finished")

        asyncio.get_running_loop().call_later(0.05, consumer.stop_flow)
        suspended = consumer.suspend_flow.wait()
        result = await consumer.wait_first(callback(), suspended)
        await asyncio.sleep(0)
        return steps, result.done == [suspended]

    steps, only_suspension_won = run(scenario())
    assert steps == ["started", "cancelled"]
    assert only_suspension_won
