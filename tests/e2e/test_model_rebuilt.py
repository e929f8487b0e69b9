"""The model rebuilt from the topics: by `stocksync rebuild` mid-stream, and when Redis lost it."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stocksync.daemon.services import RedisServer
from tests.e2e.events import realistic_stream
from tests.e2e.harness import Cluster, redis_options
from tests.e2e.processes import ApiReplica

__all__: list[str] = []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.mark.parametrize("redis_kind", ["redis", "redis-cluster"])
def test_rebuild_mid_stream_then_the_rest_of_it(
    make_cluster: Callable[..., Cluster], request: pytest.FixtureRequest, redis_kind: str
) -> None:
    """Half a stream, a worker stop, `stocksync rebuild`, a worker again and the other half:
    orders and returns that began before the rebuild go on after it, and the model, in Redis
    and in a fresh API replica, is exactly the reference (also on a Redis Cluster, where the
    new generation's 12 shards, markers and streams are written and switched to)."""
    cluster = make_cluster(partitions=4, **redis_options(request, redis_kind))
    rng = random.Random(cluster.seed())
    messages = realistic_stream(rng, cluster.wire, 2000)
    half = len(messages) // 2
    worker = cluster.start_worker()
    cluster.send(messages[:half])
    cluster.settle()
    before = cluster.namespace()
    code, _ = worker.terminate(30)
    assert code == 0, worker.tail()

    done = cluster.rebuild("--yes")
    assert done.returncode == 0, done.stderr
    assert cluster.namespace() != before
    cluster.check_model()

    worker.start().wait_ready()
    cluster.send(messages[half:])
    cluster.settle()
    reference = cluster.check_model()
    cluster.check_dead_letters(reference, exactly_once=False)
    cluster.check_api(cluster.start_api().wait_ready(), reference)


def _watch_model_lost(replica: ApiReplica, timeout: float) -> bool:
    """Whether ``/readyz`` said ``model_lost`` before it was ready again."""
    deadline = time.monotonic() + timeout
    seen = False
    while time.monotonic() < deadline:
        status, body = replica.readyz()
        if status == 503 and body.get("error", {}).get("code") == "model_lost":
            seen = True
        elif status == 200 and seen:
            return True
        time.sleep(0.05)
    return seen


def test_redis_restarted_empty_mid_stream_is_rebuilt_by_the_worker(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Redis (without persistence) restarted mid-stream comes back empty: the worker notices
    before writing, rebuilds the model from the topics, and goes on; the running API replica
    says model_lost, keeps answering, then serves the rebuilt model; a fresh worker and a
    fresh replica agree with the reference. No operator action."""
    volatile = RedisServer(data_dir=tmp_path / "volatile-redis", persistent=False)
    volatile.start()
    try:
        cluster = make_cluster(partitions=4, redis_url=volatile.url_for(0))
        rng = random.Random(cluster.seed())
        messages = realistic_stream(rng, cluster.wire, 2400)
        first, rest = messages[:1600], messages[1600:]
        worker = cluster.start_worker()
        replica = cluster.start_api().wait_ready()
        stream = cluster.send_paced(first, seconds=14)
        worker.wait_progress(skus_written=50)
        time.sleep(2.0)
        assert not stream.done(), "the stream ended before Redis restarted; slow it down"
        volatile.stop()
        volatile.start()
        cluster.note("Redis restarted empty")
        # Meanwhile the replica answers from its last model.
        status, _ = replica.readyz()
        assert status in (200, 503)
        saw_lost = _watch_model_lost(replica, 60)
        stream.result(timeout=120)
        cluster.settle()
        assert worker.alive, worker.tail()
        reference = cluster.check_model()
        cluster.check_dead_letters(reference, exactly_once=False)
        assert saw_lost, "the API replica never said model_lost"
        lines = [str(line.get("msg")) for line in worker.run_lines()]
        assert any("rebuilt the lost model" in line for line in lines), worker.tail()
        replica.wait_ready()
        cluster.check_api(replica, reference)

        # A fresh worker and a fresh replica go on from the rebuilt model.
        code, _ = worker.terminate(30)
        assert code == 0, worker.tail()
        cluster.start_worker("w2")
        cluster.send(rest)
        cluster.settle()
        reference = cluster.check_model()
        cluster.check_api(cluster.start_api().wait_ready(), reference)
        cluster.check_api(replica, reference)
    finally:
        volatile.stop()
