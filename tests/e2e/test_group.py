"""Two workers in one consumer group share the partitions; one dies, the other takes over."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from tests.e2e.events import realistic_stream
from tests.e2e.harness import Cluster, redis_options

__all__: list[str] = []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _batches(metrics: dict[str, float]) -> float:
    return metrics.get("stocksync_batch_size_count", 0.0)


@pytest.mark.parametrize("redis_kind", ["redis", "redis-cluster"])
def test_two_workers_share_the_partitions_and_survive_the_loss_of_one(
    make_cluster: Callable[..., Cluster], request: pytest.FixtureRequest, redis_kind: str
) -> None:
    """Both workers of one group process part of the stream and the model equals the
    reference; after one is SIGKILLed mid-stream the survivor finishes it, still exact
    (on one Redis and on a three-master Redis Cluster)."""
    cluster = make_cluster(partitions=4, **redis_options(request, redis_kind))
    rng = random.Random(cluster.seed())
    messages = realistic_stream(rng, cluster.wire, 2400)
    half = len(messages) // 2
    first, second = cluster.start_workers(2)

    cluster.send_paced(messages[:half], seconds=3).result(timeout=60)
    cluster.settle()
    cluster.check_model()
    shares = {w.name: _batches(w.metrics()) for w in (first, second)}
    cluster.note(f"batches per worker after the shared half: {shares}")
    assert all(shares.values()), f"a worker got no partitions: {shares}"

    stream = cluster.send_paced(messages[half:], seconds=8)
    time.sleep(rng.uniform(1.0, 3.0))
    assert not stream.done(), "the stream ended before the kill; slow it down"
    second.kill()
    cluster.note(f"worker b killed at {time.strftime('%H:%M:%S')}")
    stream.result(timeout=60)
    cluster.settle()

    reference = cluster.check_model()
    cluster.check_dead_letters(reference, exactly_once=False)
    assert first.alive
