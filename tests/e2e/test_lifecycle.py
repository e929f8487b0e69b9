"""Stopping and refusing to start: SIGTERM is clean, missing services fail fast and clearly."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stocksync.daemon.services import TansuBroker, free_port
from tests.e2e.events import realistic_stream
from tests.e2e.harness import Cluster
from tests.e2e.processes import WorkerProcess

__all__: list[str] = []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SHUTDOWN_TIMEOUT = 10.0
#: Interpreter teardown after the worker's own stop, on a busy machine.
EXIT_SLACK = 3.0


@pytest.fixture(scope="module")
def redis_less_worker(
    broker: TansuBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A worker pointed at a port where no Redis listens, started when this module begins:
    it waits for Redis for a while before giving up, and that wait overlaps the other test."""
    cluster = Cluster(
        bootstrap=broker.bootstrap,
        broker_url=broker.url,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        prefix=f"t{uuid.uuid4().hex[:12]}",
        workdir=tmp_path_factory.mktemp("no-redis"),
    )
    try:
        yield cluster.worker("no-redis").start()
    finally:
        cluster.close()


@pytest.mark.usefixtures("redis_less_worker")  # started now: its wait overlaps this test
def test_sigterm_mid_stream_stops_cleanly_and_commits(
    make_cluster: Callable[..., Cluster],
) -> None:
    """SIGTERM while events stream in: exit status 0 within the shutdown timeout, and the
    next run neither misses nor re-reads anything (offsets were committed on the way out)."""
    cluster = make_cluster(partitions=4, shutdown_timeout=SHUTDOWN_TIMEOUT)
    rng = random.Random(cluster.seed())
    # No producer duplicates here: any skip after the restart would be a redelivery.
    messages = realistic_stream(rng, cluster.wire, 1200, duplicates=False)
    worker = cluster.start_worker()
    stream = cluster.send_paced(messages, seconds=6)
    worker.wait_progress()
    code, took = worker.terminate(SHUTDOWN_TIMEOUT + EXIT_SLACK)
    assert code == 0, f"exit status {code} after SIGTERM ({took:.1f} s)"
    assert took <= SHUTDOWN_TIMEOUT + EXIT_SLACK
    lines = worker.run_lines()
    assert any(line.get("msg") == "worker stopped" for line in lines)
    assert not [line for line in lines if line.get("level") in ("error", "critical")]
    stream.result(timeout=60)

    worker.start().wait_ready()
    cluster.settle()
    reference = cluster.check_model()
    cluster.check_dead_letters(reference, exactly_once=True)
    metrics = worker.metrics()
    assert metrics.get("stocksync_effects_skipped_total", 0.0) == 0, "effects were redelivered"
    assert metrics.get("stocksync_events_skipped_total", 0.0) == 0, "events were redelivered"


def _last_line(worker: WorkerProcess) -> dict[str, Any]:
    text = worker.run_text()
    assert "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    parsed: dict[str, Any] = json.loads(last)
    return parsed


def test_unreachable_broker_or_redis_exits_non_zero_with_one_clear_line(
    make_cluster: Callable[..., Cluster],
    redis_less_worker: WorkerProcess,
) -> None:
    """No broker: exit 1 at once; no Redis: exit 1 after its wait. Each ends with one error
    line saying what failed and which setting to fix, and no traceback."""
    cluster = make_cluster()
    no_redis = redis_less_worker
    no_broker = cluster.worker(
        "no-broker", STOCKSYNC_BROKER=f"kafka://127.0.0.1:{free_port()}"
    ).start()

    assert no_broker.wait_exit(timeout=60) == 1
    line = _last_line(no_broker)
    assert line["level"] == "error" and line["logger"] == "stocksync.worker"
    assert "No Kafka broker answered" in line["msg"] and "STOCKSYNC_BROKER" in line["msg"]
    assert "\n" not in line["msg"]

    assert no_redis.wait_exit(timeout=90) == 1
    line = _last_line(no_redis)
    assert line["level"] == "error" and line["logger"] == "stocksync.worker"
    assert "Redis" in line["msg"] and "STOCKSYNC_REDIS_URL" in line["msg"]
    assert "\n" not in line["msg"]
