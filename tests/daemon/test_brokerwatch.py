"""The broker watch and the client log gate, on a clock and a probe given by hand."""

from __future__ import annotations

import asyncio
import logging

import pytest

from stocksync.agents.metrics import WorkerMetrics
from stocksync.agents.topics import BrokerUnavailable
from stocksync.config.settings import Settings
from stocksync.daemon.brokerwatch import BrokerWatch, ClientLogGate

__all__: list[str] = []


class Broker:
    """A probe: up or down, and topics to report as created on the next answer."""

    def __init__(self) -> None:
        self.up = True
        self.recreate: list[str] = []

    async def __call__(self, settings: Settings, created: list[str]) -> dict[str, int]:
        if not self.up:
            raise BrokerUnavailable("No Kafka broker answered at '127.0.0.1:9'")
        created.extend(self.recreate)
        self.recreate = []
        return {}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watch_of(broker: Broker, clock: Clock) -> BrokerWatch:
    return BrokerWatch(Settings(), WorkerMetrics(), probe=broker, clock=clock)


def messages(caplog: pytest.LogCaptureFixture, logger: str = "stocksync.broker") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def test_an_outage_is_logged_once_then_every_30_s_and_its_end_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, clock = Broker(), Clock()
    watch = watch_of(broker, clock)
    recreated: list[list[str]] = []
    watch.on_recreated = recreated.append

    async def scenario() -> list[str | None]:
        problems = []
        assert await watch.check()
        problems.append(watch.problem())
        broker.up = False
        for _ in range(70):  # 70 s of probes, one a second
            await watch.check()
            clock.now += 1
        problems.append(watch.problem())
        broker.up = True
        broker.recreate = ["p.stock.v1", "p.effects.v1"]
        await watch.check()
        problems.append(watch.problem())
        return problems

    with caplog.at_level(logging.INFO, logger="stocksync.broker"):
        problems = asyncio.run(scenario())
    assert problems[0] is None and problems[2] is None
    assert problems[1] is not None
    assert problems[1].startswith("the Kafka broker is unreachable since 70 s: No Kafka broker")
    lines = messages(caplog)
    assert len(lines) == 5, lines
    assert lines[0].startswith("The Kafka broker is unreachable: No Kafka broker answered")
    assert lines[1].startswith("The Kafka broker is still unreachable after 30 s")
    assert lines[2].startswith("The Kafka broker is still unreachable after 60 s")
    assert lines[3].startswith("The Kafka broker answers again after 70 s")
    assert "p.stock.v1, p.effects.v1 had disappeared" in lines[4]
    assert recreated == [["p.stock.v1", "p.effects.v1"]]
    assert watch.metrics.broker_up._value.get() == 1


def test_the_gate_holds_client_lines_back_during_an_outage_and_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, clock = Broker(), Clock()
    watch = watch_of(broker, clock)
    gate = ClientLogGate(watch)
    client = logging.getLogger("aiokafka.consumer.fetcher")
    faust = logging.getLogger("faust.transport.consumer")
    gate.install()
    try:
        with (
            caplog.at_level(logging.INFO, logger="aiokafka.consumer.fetcher"),
            caplog.at_level(logging.INFO, logger="stocksync.broker"),
            caplog.at_level(logging.INFO, logger="faust.transport.consumer"),
        ):
            broker.up = False
            asyncio.run(watch.check())
            for _ in range(50):
                client.error("Failed fetch messages from %s: NodeNotReadyError", 111)
            client.info("an info line always passes")
            faust.error("Drain messages raised: %r", ValueError("a bug"))  # not the outage
            clock.now += 31
            broker.up = True
            asyncio.run(watch.check())
    finally:
        gate.remove()
    fetcher = messages(caplog, "aiokafka.consumer.fetcher")
    assert fetcher == ["an info line always passes"]
    drained = messages(caplog, "faust.transport.consumer")
    assert drained == ["Drain messages raised: ValueError('a bug')"]
    assert "50 client log lines held back" in messages(caplog)[-1]
    assert client.filters == []


def test_the_gate_writes_a_repeated_client_line_once_per_period_with_the_repeats(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watch = watch_of(Broker(), clock)
    woken: list[str] = []
    watch.suspect = woken.append  # type: ignore[method-assign]
    gate = ClientLogGate(watch)
    client = logging.getLogger("aiokafka")
    gate.install()
    try:
        with caplog.at_level(logging.WARNING, logger="aiokafka"):
            for _ in range(20):
                client.error("Unable connect to node with id %s: Connection refused", 111)
                client.warning("Heartbeat failed for group %s", "g")
            clock.now += 30
            client.error("Unable connect to node with id %s: Connection refused", 111)
    finally:
        gate.remove()
    records = [r for r in caplog.records if r.name == "aiokafka"]
    assert [r.getMessage()[:20] for r in records] == [
        "Unable connect to no",
        "Heartbeat failed for",
        "Unable connect to no",
    ]
    assert getattr(records[2], "repeats_held_back", 0) == 19
    assert len(woken) == 21  # connection errors wake the watch, written or not
