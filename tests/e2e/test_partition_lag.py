"""Consumer lag per partition: 0 once caught up, and a stuck partition shows as stalled.

The worker exports ``stocksync_consumer_lag`` and
``stocksync_consumer_partition_stalled_seconds`` for every partition assigned
to it (:mod:`stocksync.agents.lag`). Here it first consumes a stream and every
partition's lag comes back to 0; then Redis holds every write
(``CLIENT PAUSE ... WRITE``), so the batch that carries new events of one
stock partition cannot finish: the partition they wait in lags and its
stalled time grows, while partitions that received nothing stay at 0. Once
Redis takes writes again everything drains back to 0.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import redis

from stocksync.agents.topics import effects_partition
from tests.e2e.events import T0, bulk, realistic_stream
from tests.e2e.harness import Cluster
from tests.e2e.processes import WorkerProcess

__all__: list[str] = []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

LAG = "stocksync_consumer_lag"
STALLED = "stocksync_consumer_partition_stalled_seconds"
#: Redis holds writes at most this long even if the test dies before lifting the pause.
PAUSE_MS = 45_000

Figures = dict[tuple[str, int], float]


def _by_partition(worker: WorkerProcess, name: str) -> Figures:
    found: Figures = {}
    for labels, value in worker.samples(name).items():
        named = dict(labels)
        found[(named["topic"], int(named["partition"]))] = value
    return found


def _wait_for(
    worker: WorkerProcess, what: str, check: Callable[[Figures, Figures], bool],
    timeout: float = 30.0,
) -> tuple[Figures, Figures]:
    deadline = time.monotonic() + timeout
    while True:
        lag, stalled = _by_partition(worker, LAG), _by_partition(worker, STALLED)
        if check(lag, stalled):
            return lag, stalled
        if time.monotonic() > deadline or not worker.alive:
            raise AssertionError(f"{what} within {timeout:.0f} s; lag {lag}, stalled {stalled}")
        time.sleep(0.25)


def test_lag_is_zero_when_caught_up_and_a_stuck_partition_shows_stalled(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(partitions=4)
    rng = random.Random(cluster.seed())
    worker = cluster.start_worker()
    cluster.send(realistic_stream(rng, cluster.wire, 400))
    cluster.settle()
    every = {(cluster.topics[kind], p) for kind in ("stock", "orders", "returns", "effects")
             for p in range(cluster.partitions)}
    _wait_for(
        worker, "every assigned partition at lag 0",
        lambda lag, stalled: set(lag) == every and set(stalled) == every
        and not any(lag.values()) and not any(stalled.values()),
    )

    # New stock events on stock partition 1 only, for SKUs of effects partition 2.
    skus = [s for s in (f"lag-{i}" for i in range(200)) if effects_partition(s, 4) == 2][:20]
    at = T0 + timedelta(days=2)
    held = [bulk("stock", f"lag-{n}", [cluster.wire.adjusted(s, "dc-east", 1, at) for s in skus],
                 partition=1) for n in range(5)]
    waiting = {(cluster.topics["stock"], 1), (cluster.topics["effects"], 2)}
    admin = redis.Redis.from_url(cluster.redis_url)
    try:
        admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        cluster.note(f"Redis writes paused at {time.strftime('%H:%M:%S')}")
        cluster.send(held)

        def stuck(lag: Figures, stalled: Figures) -> bool:
            return any(lag.get(tp, 0) > 0 and stalled.get(tp, 0) > 0 for tp in waiting)

        lag, stalled = _wait_for(worker, "a partition of the held events lagging and stalled",
                                 stuck)
        tp = next(tp for tp in sorted(waiting) if lag.get(tp, 0) > 0 and stalled.get(tp, 0) > 0)
        first = stalled[tp]
        _wait_for(
            worker, f"{tp}'s stalled time growing past {first}",
            lambda lag, stalled: lag.get(tp, 0) > 0 and stalled.get(tp, 0) > first,
        )
        # Partitions that received nothing new are not flagged.
        lag, stalled = _by_partition(worker, LAG), _by_partition(worker, STALLED)
        quiet = every - waiting
        assert all(lag[q] == 0 and stalled[q] == 0 for q in quiet), (lag, stalled)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
    cluster.note(f"Redis writes resumed at {time.strftime('%H:%M:%S')}")
    cluster.settle()
    _wait_for(
        worker, "every partition back at lag 0 and not stalled",
        lambda lag, stalled: set(lag) == every
        and not any(lag.values()) and not any(stalled.values()),
    )


def test_partitions_revoked_by_a_rebalance_leave_the_first_workers_gauges(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A second worker joins: the first one's gauges keep only the partitions it still
    has, the two together cover every partition once, and all read 0 once caught up."""
    cluster = make_cluster(partitions=4)
    every = {(cluster.topics[kind], p) for kind in ("stock", "orders", "returns", "effects")
             for p in range(cluster.partitions)}
    a = cluster.start_worker("a")
    _wait_for(a, "worker a exporting every partition", lambda lag, _: set(lag) == every)
    b = cluster.start_worker("b")
    cluster.send(realistic_stream(random.Random(cluster.seed()), cluster.wire, 200))
    cluster.settle()

    def split(lag: Figures, stalled: Figures) -> bool:
        theirs = _by_partition(b, LAG)
        return (set(lag) | set(theirs) == every and not set(lag) & set(theirs)
                and set(stalled) == set(lag) and bool(lag) and bool(theirs)
                and not any(lag.values()) and not any(theirs.values()))

    _wait_for(a, "the two workers' gauges splitting the partitions, all at 0", split)
