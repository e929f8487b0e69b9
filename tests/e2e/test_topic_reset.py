"""A broker that comes back empty: new topics, offsets from 0, and nothing taken for old."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from stocksync.agents.topics import ensure_topics
from stocksync.config.settings import Settings
from stocksync.daemon.services import TansuBroker
from tests.e2e.events import NODES, T0, Msg, Wire, realistic_stream, single
from tests.e2e.harness import Cluster

__all__: list[str] = []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of this test's own (it is restarted, empty), in place of the session's."""
    service = TansuBroker(data_dir=tmp_path / "tansu")
    service.start()
    try:
        yield service
    finally:
        service.stop()


def later_events(wire: Wire, rng: random.Random, count: int) -> list[Msg]:
    """Stock changes and new orders, a day after the first stream, on the same SKUs."""
    at = T0 + timedelta(days=2)
    messages: list[Msg] = []
    for i in range(count):
        sku = f"SKU-{rng.randrange(40):03d}"
        node = rng.choice(NODES)
        moment = at + timedelta(seconds=i)
        if i % 5 == 4:
            event = wire.created(f"late-{i}", [("1", sku, 1, node)], at=moment)
        else:
            event = wire.adjusted(sku, node, rng.randint(1, 9), moment)
        messages.append(single(event))
    return messages


def recreate_topics(cluster: Cluster) -> None:
    """Create the source topics as their producers' operators would, before producing."""
    settings = Settings(broker=cluster.broker_url, topic_prefix=cluster.prefix,
                        partitions=cluster.partitions)
    asyncio.run(ensure_topics(cluster.bootstrap, settings))


def test_events_on_a_recreated_broker_are_applied_not_taken_for_duplicates(
    make_cluster: Callable[..., Cluster], broker: TansuBroker
) -> None:
    """A scenario, the worker stopped, the broker restarted empty (new topics, no group
    offsets), new events at offsets from 0 again, the worker started: every new event is
    applied (Redis equals the reference of everything sent), and the worker logged and
    counted each partition's new incarnation."""
    cluster = make_cluster(partitions=4)
    rng = random.Random(cluster.seed())
    worker = cluster.start_worker()
    cluster.send(realistic_stream(rng, cluster.wire, 800, invalid=False))
    cluster.settle()
    cluster.check_model()
    status, _ = worker.terminate(timeout=30)
    assert status == 0, worker.tail()

    broker.stop()
    broker.start()
    cluster.note(f"broker restarted empty at {time.strftime('%H:%M:%S')}")
    recreate_topics(cluster)
    cluster.send(later_events(cluster.wire, rng, 300))

    worker.start().wait_ready()
    cluster.settle()
    cluster.check_model()

    metrics = worker.metrics()
    renewed = metrics.get("stocksync_topic_incarnations_total", 0.0)
    lines = [line for line in worker.run_lines() if "new incarnation" in str(line.get("msg"))]
    cluster.note(f"incarnations counted {renewed:.0f}, logged {len(lines)}")
    # Every source partition the first stream used got a new incarnation, once.
    assert renewed >= 4, renewed
    assert len(lines) == renewed
    assert {line["topic"] for line in lines} >= {cluster.topics["stock"], cluster.topics["orders"]}
