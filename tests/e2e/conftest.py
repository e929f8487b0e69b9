"""Fixtures of the end-to-end tests: a :class:`~tests.e2e.harness.Cluster` factory.

A failing test's report gains the cluster's notes (the random seed) and the
tail of every worker's log.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from stocksync.daemon.services import TansuBroker
from tests.e2e.harness import Cluster

__all__ = ["make_cluster"]

_CLUSTERS = pytest.StashKey[list[Cluster]]()


@pytest.fixture
def make_cluster(
    request: pytest.FixtureRequest,
    broker: TansuBroker,
    redis_url: str,
    topic_prefix: str,
    tmp_path: Path,
) -> Iterator[Callable[..., Cluster]]:
    """Build the test's cluster (topics, group and Redis database unique to the test)."""
    made: list[Cluster] = []
    request.node.stash[_CLUSTERS] = made

    def build(**options: Any) -> Cluster:
        assert not made, "one cluster per test"
        chosen: dict[str, Any] = {
            "bootstrap": broker.bootstrap,
            "broker_url": broker.url,
            "redis_url": redis_url,
            "prefix": topic_prefix,
            "workdir": tmp_path,
        }
        chosen.update(options)  # e.g. a Redis of the test's own
        cluster = Cluster(**chosen)
        made.append(cluster)
        return cluster

    yield build
    for cluster in made:
        cluster.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the seed and the workers' logs to a failed end-to-end test's report."""
    report = yield
    if report.failed and report.when in ("call", "setup"):
        for cluster in item.stash.get(_CLUSTERS, []):
            report.sections.extend(cluster.diagnostics())
    return report
