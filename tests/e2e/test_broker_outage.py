"""The broker goes away under a running worker: not ready, quiet, and back on its own."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stocksync.daemon.services import TansuBroker
from tests.e2e.events import realistic_stream
from tests.e2e.harness import Cluster
from tests.e2e.processes import WorkerProcess
from tests.e2e.test_topic_reset import later_events

__all__: list[str] = []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: How long the broker stays away.
OUTAGE_SECONDS = 12.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of this test's own (it is stopped and restarted), in place of the session's."""
    service = TansuBroker(data_dir=tmp_path / "tansu")
    service.start()
    try:
        yield service
    finally:
        service.stop()


def readiness(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    """``GET /readyz`` of the worker: (status, JSON body)."""
    url = f"http://127.0.0.1:{worker.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_readiness(worker: WorkerProcess, status: int, timeout: float) -> dict[str, Any]:
    """Wait until ``/readyz`` answers ``status``; its body."""
    deadline = time.monotonic() + timeout
    while True:
        got, body = readiness(worker)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"/readyz still {got} {body}:\n{worker.tail()}"
        time.sleep(0.2)


def test_a_broker_outage_is_one_fact_and_the_worker_carries_on_after_it(
    make_cluster: Callable[..., Cluster], broker: TansuBroker
) -> None:
    """While the broker is down /readyz is 503 saying so and the log holds a few lines, not
    dozens a second; when it comes back (empty) the worker recreates the topics, is ready
    again without a restart, and events sent then are applied."""
    cluster = make_cluster(partitions=4)
    rng = random.Random(cluster.seed())
    worker = cluster.start_worker()
    cluster.send(realistic_stream(rng, cluster.wire, 400, invalid=False))
    cluster.settle()
    assert readiness(worker)[0] == 200

    lines_before = len(worker.run_lines())
    broker.stop()
    stopped = time.monotonic()
    body = wait_readiness(worker, 503, timeout=10)
    cluster.note(f"503 after {time.monotonic() - stopped:.1f} s: {body}")
    assert "broker" in body["error"]["message"], body
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
    during = worker.run_lines()[lines_before:]
    cluster.note(f"{len(during)} log lines during {OUTAGE_SECONDS:.0f} s of outage")
    assert any("unreachable" in str(line.get("msg")) for line in during), during
    # Without the gate aiokafka wrote about 77 ERROR lines a second here.
    assert len(during) <= 12, "\n".join(str(line.get("msg")) for line in during)

    broker.start()
    restarted = time.monotonic()
    wait_readiness(worker, 200, timeout=60)
    cluster.note(f"ready again {time.monotonic() - restarted:.1f} s after the broker restarted")
    assert worker.alive
    messages = [str(line.get("msg")) for line in worker.run_lines()[lines_before:]]
    assert any("answers again" in m for m in messages), messages
    assert any("created again" in m for m in messages), messages

    cluster.send(later_events(cluster.wire, rng, 200))
    cluster.settle(timeout=120)
    cluster.check_model()
    assert worker.alive


def test_sigterm_during_an_outage_exits_within_the_shutdown_timeout(
    make_cluster: Callable[..., Cluster], broker: TansuBroker
) -> None:
    """With the broker gone Faust's stop can wait on it for minutes; SIGTERM still ends the
    process within ``worker.shutdown_timeout``, saying so when it had to cut the stop short."""
    cluster = make_cluster(partitions=2, shutdown_timeout=4.0)
    rng = random.Random(cluster.seed())
    worker = cluster.start_worker()
    cluster.send(realistic_stream(rng, cluster.wire, 100, invalid=False))
    cluster.settle()
    broker.stop()
    wait_readiness(worker, 503, timeout=10)
    status, seconds = worker.terminate(timeout=30)
    cluster.note(f"exit {status} {seconds:.1f} s after SIGTERM")
    assert status is not None and seconds <= 4.0 + 1.5, (status, seconds)
    assert status in (0, 75), status
    # Every line is a log line: a library thread that dies on the way out logs once.
    raw = [text for text in worker.run_text().splitlines()[1:] if not text.startswith("{")]
    assert not raw, "\n".join(raw[:20])
    if status == 75:
        assert any("did not stop within" in str(line.get("msg")) for line in worker.run_lines())
