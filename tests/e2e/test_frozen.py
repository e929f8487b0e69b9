"""Workers frozen longer than their session (a VM pause, a long stall) and then resumed.

While a worker is stopped (SIGSTOP) its broker session (6 s, see
:mod:`stocksync.agents.app`) expires: the group rebalances without it, and when
it is continued (SIGCONT) it finds itself out of the group, with batches in
flight, commits refused ("UnknownMemberIdError", "IllegalGenerationError") and
the thread keepalive complaining. Whatever the order, every event sent must end
up applied: the model converges to the reference ledger. A failure names the
partitions of the group whose committed offset is behind what was sent.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable

import pytest

from tests.e2e.events import realistic_stream
from tests.e2e.harness import Cluster
from tests.e2e.processes import WorkerProcess

__all__: list[str] = []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: Longer than the workers' session timeout (6 s).
FROZEN_SECONDS = 10.0


def _signal(workers: list[WorkerProcess], signum: signal.Signals) -> None:
    for w in workers:
        if w.proc is not None and w.proc.poll() is None:
            os.kill(w.proc.pid, signum)


@pytest.mark.parametrize(("frozen", "backlog"), [("both", False), ("both", True), ("one", False)])
def test_workers_frozen_past_their_session_converge_after_resuming(
    make_cluster: Callable[..., Cluster], frozen: str, backlog: bool
) -> None:
    """Two workers share 8 partitions; ``frozen`` of them is SIGSTOPped for longer than
    its session, either while events stream in (``backlog`` False) or after everything
    before was applied, with the rest produced at once while it is stopped (``backlog``
    True, as a benchmark does); then SIGCONTed. Within 60 s every event sent is applied
    and Redis equals the reference."""
    cluster = make_cluster(partitions=8)
    rng = random.Random(cluster.seed())
    messages = realistic_stream(rng, cluster.wire, 6000)
    first_part = len(messages) // 3
    a, b = cluster.start_workers(2)
    cluster.send_paced(messages[:first_part], seconds=2).result(timeout=60)
    stream = None
    if backlog:
        cluster.settle()
    else:
        stream = cluster.send_paced(messages[first_part:], seconds=FROZEN_SECONDS * 0.6)
        time.sleep(rng.uniform(0.2, 1.5))  # the workers are busy with it when they stop
    stopped = [a, b] if frozen == "both" else [rng.choice([a, b])]
    _signal(stopped, signal.SIGSTOP)
    try:
        started = time.monotonic()
        cluster.note(f"stopped {[w.name for w in stopped]} at {time.strftime('%H:%M:%S')}")
        if stream is None:
            cluster.send(messages[first_part:])
        else:
            stream.result(timeout=60)
        time.sleep(max(0.0, FROZEN_SECONDS - (time.monotonic() - started)))
    finally:
        _signal(stopped, signal.SIGCONT)
    cluster.note(f"continued at {time.strftime('%H:%M:%S')}")
    try:
        cluster.settle(timeout=60)
    except AssertionError as exc:
        lag = cluster.group_lag()
        raise AssertionError(f"{exc}\nlagging partitions:\n" + "\n".join(lag)) from None
    cluster.check_model()
    cluster.note("group lag after settling (commits trail by up to 2.8 s): "
                 f"{cluster.group_lag() or 'none'}")
    assert a.alive and b.alive, "; ".join(w.describe() for w in (a, b))
