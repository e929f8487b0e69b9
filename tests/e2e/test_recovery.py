"""Crashes and outages mid-stream: nothing lost, nothing applied twice."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from tests.e2e.events import realistic_stream
from tests.e2e.harness import Cluster, redis_options

__all__: list[str] = []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.mark.parametrize(
    ("batch_size", "redis_kind"),
    [(None, "redis"), (7, "redis"), (None, "redis-cluster")],
    ids=["default-batches", "batches-translated-in-chunks-of-7", "on-a-redis-cluster"],
)
def test_sigkill_twice_mid_stream_loses_nothing_and_applies_nothing_twice(
    make_cluster: Callable[..., Cluster],
    request: pytest.FixtureRequest,
    batch_size: int | None,
    redis_kind: str,
) -> None:
    """A worker SIGKILLed twice while a few thousand events stream in, restarted each time,
    ends with exactly the reference model (and every dead letter, possibly repeated).

    With a batch size of 7 events, bulk exports are translated and their effects sent
    in many chunks per batch, so kills also land between the chunks of a batch."""
    cluster = make_cluster(
        partitions=4, batch_size=batch_size, **redis_options(request, redis_kind)
    )
    rng = random.Random(cluster.seed())
    messages = realistic_stream(rng, cluster.wire, 3000)
    worker = cluster.start_worker()
    started = time.monotonic()
    stream = cluster.send_paced(messages, seconds=28)
    seen_before_kills = 0.0
    for kill in (1, 2):
        worker.wait_progress()
        time.sleep(rng.uniform(0.5, 2.0))
        assert not stream.done(), "the stream ended before the kill; slow it down"
        seen_before_kills += worker.events_seen()
        worker.kill()
        cluster.note(f"kill {kill} at +{time.monotonic() - started:.1f} s")
        worker.start()
        worker.wait_ready()
        cluster.note(f"run {kill + 1} ready at +{time.monotonic() - started:.1f} s")
    stream.result(timeout=120)
    cluster.note(f"stream sent by +{time.monotonic() - started:.1f} s")
    cluster.settle()

    reference = cluster.check_model()
    cluster.check_dead_letters(reference, exactly_once=False)
    # The kills hit work that was not committed yet: the restarted runs saw some events
    # again. Without that this test would prove nothing about recovery.
    seen = seen_before_kills + worker.events_seen()
    cluster.note(f"events sent {reference.events}, seen by the three runs {seen:.0f}")
    assert seen > reference.events, (seen, reference.events)


def test_redis_outage_mid_stream_is_waited_out(
    make_cluster: Callable[..., Cluster],
    redis_server: object,
) -> None:
    """Redis stopped for a few seconds while events keep coming: the worker retries, stays
    up, catches up after the restart, and ends with exactly the reference model."""
    cluster = make_cluster(partitions=4)
    rng = random.Random(cluster.seed())
    messages = realistic_stream(rng, cluster.wire, 1500)
    worker = cluster.start_worker()
    stream = cluster.send_paced(messages, seconds=12)
    worker.wait_progress()
    time.sleep(1.0)
    redis_server.stop()  # type: ignore[attr-defined]
    try:
        time.sleep(4.0)
        assert worker.alive, "the worker died while Redis was down"
        retries = worker.metrics().get("stocksync_redis_retries_total", 0.0)
        cluster.note(f"retries counted during the outage: {retries:.0f}")
    finally:
        redis_server.start()  # type: ignore[attr-defined]
    assert not stream.done(), "the stream ended during the outage; slow it down"
    stream.result(timeout=120)
    cluster.settle()

    reference = cluster.check_model()
    cluster.check_dead_letters(reference, exactly_once=False)
    assert worker.alive
    assert retries > 0, "no Redis retry was counted during the outage"
    assert any("retrying" in str(line.get("msg")) for line in worker.run_lines())
