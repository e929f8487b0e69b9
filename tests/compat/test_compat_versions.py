"""The version checks of stocksync.compat: the adjustments stand down on another release.

A mismatched version is simulated by patching the version lookup; the fallback
must then be the library's stock behaviour, said once in the log, and a worker
must still deliver messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import faust
import pytest
import uvloop
from aiokafka import AIOKafkaProducer

import stocksync.compat
from stocksync.agents.app import create_app, raw_topic, start_worker, stop_worker
from stocksync.agents.topics import ensure_topics, topic_names
from stocksync.compat import aiokafka as compat_aiokafka
from stocksync.compat import faust as compat_faust
from stocksync.compat import mode as compat_mode
from stocksync.config.settings import Settings, WorkerSettings
from stocksync.daemon.services import TansuBroker

__all__: list[str] = []

T = TypeVar("T")

#: Releases none of the adjustments were written for.
OTHER_RELEASES = {"faust-streaming": "0.16.0", "mode-streaming": "0.8.0", "aiokafka": "0.15.1"}


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` on a fresh uvloop loop, bounded by ``timeout`` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


def test_the_installed_releases_are_the_ones_the_adjustments_were_written_for() -> None:
    """A canary: upgrading faust, mode or aiokafka fails here first, on purpose."""
    assert compat_faust.ACTIVE and compat_mode.ACTIVE and compat_aiokafka.ACTIVE


def test_supported_takes_the_range_and_says_once_when_it_stands_down(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(stocksync.compat, "installed_version", lambda name: "0.15.9")
    with caplog.at_level(logging.WARNING, logger="stocksync.compat"):
        assert stocksync.compat.supported("faust-streaming", "0.15.3", "0.16", what="x")
        assert not caplog.records
        assert not stocksync.compat.supported("faust-streaming", "0.15.3", "0.15.5", what="slow")
        assert not stocksync.compat.supported("faust-streaming", "0.16.0", "0.17", what="slow")
    monkeypatch.setattr(stocksync.compat, "installed_version", lambda name: "not a version")
    with caplog.at_level(logging.WARNING, logger="stocksync.compat"):
        assert not stocksync.compat.supported("faust-streaming", "0.15.3", "0.16", what="slow")
    assert len(caplog.records) == 3
    assert "stock behaviour" in caplog.records[0].getMessage()
    assert "0.15.9" in caplog.records[0].getMessage()


@pytest.fixture
def other_releases(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> list[str]:
    """Pretend other releases are installed; each module checks again. The warnings logged."""
    monkeypatch.setattr(
        stocksync.compat, "installed_version", lambda name: OTHER_RELEASES.get(name, "1.0")
    )
    with caplog.at_level(logging.WARNING, logger="stocksync.compat"):
        for module in (compat_faust, compat_mode, compat_aiokafka):
            monkeypatch.setattr(module, "ACTIVE", module.check())
    return [r.getMessage() for r in caplog.records if r.name == "stocksync.compat"]


def test_on_other_releases_every_adjustment_stands_down(
    other_releases: list[str], tmp_path: Path
) -> None:
    assert not (compat_faust.ACTIVE or compat_mode.ACTIVE or compat_aiokafka.ACTIVE)
    assert len(other_releases) == 3
    assert all("using its stock behaviour" in m for m in other_releases)

    async def scenario() -> tuple[type, bool, bool, int]:
        app = create_app(Settings(broker="kafka://127.0.0.1:9"), datadir=tmp_path)
        consumer = app.consumer
        consumer._thread.thread_loop.close()  # never started
        before = len(asyncio.all_tasks())

        async def callback() -> int:
            return len(asyncio.all_tasks()) - before

        result = await compat_mode.wait_first_in_place(
            consumer, (callback(), consumer.suspend_flow.wait()), None, consumer.wait_first
        )
        unhooked = compat_aiokafka.on_offset_reset(lambda t, p, o: None)
        unhooked()
        return (
            type(app),
            compat_aiokafka.forbid_topic_auto_creation(),
            compat_aiokafka.shorten_fetch_wait(object(), 50),
            result.results[0],
        )

    app_type, forbade, shortened, tasks_around_the_callback = run(scenario())
    assert app_type is faust.App  # the stock app: its transport, consumer and sensors
    assert not forbade and not shortened
    assert tasks_around_the_callback > 0  # mode's own wait_first, with its Tasks


def test_a_worker_on_the_stock_behaviour_still_delivers(
    other_releases: list[str], broker: TansuBroker, topic_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(
        broker=broker.url,
        topic_prefix=topic_prefix,
        partitions=2,
        worker=WorkerSettings(group_id=f"{topic_prefix}-group"),
    )
    names = topic_names(settings)

    async def scenario() -> list[tuple[int, bytes]]:
        await ensure_topics(broker.bootstrap, settings)
        app = create_app(settings, datadir=tmp_path)
        assert type(app) is faust.App
        got: list[tuple[int, bytes]] = []

        @app.agent(raw_topic(app, names.stock))
        async def collect(stream: faust.Stream[bytes]) -> None:
            async for events in stream.take_events(10, 0.05):
                got.extend((e.message.offset, e.value) for e in events)

        worker = await start_worker(app, timeout=30)
        try:
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
            await producer.start()
            try:
                for value in (b"one", b"two", b"three"):
                    await producer.send_and_wait(names.stock, value, key=b"k", partition=1)
            finally:
                await producer.stop()
            while len(got) < 3:
                await asyncio.sleep(0.05)
        finally:
            await stop_worker(worker, timeout=10)
        return got

    assert run(scenario()) == [(0, b"one"), (1, b"two"), (2, b"three")]


def test_a_start_and_a_rebalance_warn_of_no_missing_sensor_state(
    broker: TansuBroker, topic_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without Faust's statistics sensor Faust warned on every rebalance; not any more."""
    settings = Settings(
        broker=broker.url,
        topic_prefix=topic_prefix,
        partitions=1,
        worker=WorkerSettings(group_id=f"{topic_prefix}-group"),
    )

    async def scenario() -> bool:
        await ensure_topics(broker.bootstrap, settings)
        app = create_app(settings, datadir=tmp_path)

        @app.agent(raw_topic(app, topic_names(settings).stock))
        async def drain(stream: faust.StreamT[bytes]) -> None:
            async for _ in stream.events():
                pass

        worker = await start_worker(app, timeout=30)
        await stop_worker(worker, timeout=10)
        return app.monitor in set(app.sensors)

    with caplog.at_level(logging.WARNING):
        monitor_kept = run(scenario())
    assert not monitor_kept
    assert not [r for r in caplog.records if "Missing sensor state" in r.getMessage()]
