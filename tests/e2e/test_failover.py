"""A Redis Cluster master SIGKILLed mid-stream: its replica takes over, nothing is lost."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from stocksync.daemon.services import LocalRedisCluster
from stocksync.store.layout import SHARD_TAGS
from tests.e2e.events import realistic_stream
from tests.e2e.harness import Cluster

__all__: list[str] = []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    """A three-master Redis Cluster with one replica per master, for this test alone."""
    cluster = LocalRedisCluster(tmp_path / "redis-cluster", masters=3, replicas=1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_a_master_killed_mid_stream_fails_over_and_loses_nothing(
    make_cluster: Callable[..., Cluster], replicated_cluster: LocalRedisCluster
) -> None:
    """The master of one shard is SIGKILLed while events stream in: its replica is
    promoted, the worker and the API replica retry and go on, and in the end Redis and
    the API hold exactly the reference model (nothing applied twice, nothing lost).

    The worker waits for a replica's acknowledgement of every write
    (``redis_wait_replicas = 1``), so no write it counted as done is missing on the
    promoted replica."""
    cluster = make_cluster(
        partitions=4, redis_url=replicated_cluster.url, redis_cluster=True
    )
    rng = random.Random(cluster.seed())
    messages = realistic_stream(rng, cluster.wire, 2500)
    worker = cluster.worker("w1", STOCKSYNC_REDIS_WAIT_REPLICAS="1").start().wait_ready()
    api = cluster.start_api().wait_ready()
    started = time.monotonic()
    stream = cluster.send_paced(messages, seconds=16)
    worker.wait_progress()
    time.sleep(rng.uniform(0.5, 2.0))
    assert not stream.done(), "the stream ended before the kill; slow it down"
    # The test's own reader learns every node now, as the worker and the API did: its
    # URL may name the master about to be killed.
    cluster.namespace()
    shard = rng.randrange(len(SHARD_TAGS))
    slot = key_slot(SHARD_TAGS[shard].encode())
    victim = replicated_cluster.master_of(slot)
    written_before = worker.metrics().get("stocksync_skus_written_total", 0.0)
    victim.kill()
    cluster.note(
        f"killed master {replicated_cluster.address(victim)} (shard {shard}, slot {slot})"
        f" at +{time.monotonic() - started:.1f} s, {written_before:.0f} SKU writes before"
    )
    # While no master serves the slot the replica says so; it never stops answering.
    deadline = time.monotonic() + 20
    while (readiness := api.readyz())[0] != 503:
        assert time.monotonic() < deadline, f"/readyz stayed {readiness} during the failover"
        time.sleep(0.05)
    cluster.note(f"/readyz during the failover: {readiness}")
    promoted = replicated_cluster.wait_failover(slot)
    cluster.note(
        f"replica {replicated_cluster.address(promoted)} took over by"
        f" +{time.monotonic() - started:.1f} s"
    )
    stream.result(timeout=120)
    cluster.settle()

    reference = cluster.check_model()
    cluster.check_dead_letters(reference, exactly_once=False)
    assert worker.alive, "the worker died during the failover"
    retries = worker.metrics().get("stocksync_redis_retries_total", 0.0)
    cluster.note(f"worker retries of Redis calls: {retries:.0f}")
    assert retries > 0, "the kill did not hit the worker's writes; it proved nothing"
    api.wait_ready()
    deadline = time.monotonic() + 15
    while True:  # the replica follows the change streams: give it a moment to catch up
        try:
            cluster.check_api(api, reference)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
