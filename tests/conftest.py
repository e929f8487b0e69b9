"""Session-wide services for the whole suite: one Tansu broker, one persistent redis-server.

Fixtures (other test packages code against these names and shapes):

- ``broker`` (session): a running :class:`~stocksync.daemon.services.TansuBroker`;
  use ``broker.bootstrap`` for aiokafka and ``broker.url`` for Faust.
- ``redis_server`` (session): a running :class:`~stocksync.daemon.services.RedisServer`
  with append-only persistence, so ``stop()`` then ``start()`` keeps the data.
- ``redis_url`` (function): ``redis://127.0.0.1:PORT/DB``, a database on
  ``redis_server`` flushed before the test.
- ``sync_client`` (function): a synchronous ``redis.Redis`` on ``redis_url``,
  closed after the test.
- ``topic_prefix`` (function): a unique prefix such as ``t3f9a0c12d4e5``, so tests
  sharing the broker never see each other's topics.

Every test, and every ``stocksync`` process a test starts, keeps the state file of
``stocksync dev`` in a folder of the session (``STOCKSYNC_DEV_STATE``): a dev run on
this machine is never taken for the test's, nor the test's for anyone else's.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from stocksync.daemon.services import LocalRedisCluster, RedisServer, TansuBroker

__all__ = ["broker", "dev_state", "redis_server", "redis_url", "sync_client", "topic_prefix"]

# Tests take the 16 databases in turn, so a client a test forgot to close
# writes into a database the next test does not use.
_REDIS_DATABASES = 16
_next_db = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the fast tests first and the slow end-to-end ones after, each in file order."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


@pytest.fixture(scope="session", autouse=True)
def dev_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The path of the dev state file for this session (set in the environment)."""
    path = str(tmp_path_factory.mktemp("devstate") / "dev.json")
    before = os.environ.get("STOCKSYNC_DEV_STATE")
    os.environ["STOCKSYNC_DEV_STATE"] = path
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop("STOCKSYNC_DEV_STATE", None)
        else:
            os.environ["STOCKSYNC_DEV_STATE"] = before


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """One running Tansu broker for the test session."""
    service = TansuBroker(data_dir=tmp_path_factory.mktemp("tansu"))
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One running redis-server with persistence on, for the test session."""
    service = RedisServer(data_dir=tmp_path_factory.mktemp("redis"), persistent=True)
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """One running three-master Redis Cluster on loopback, for the test session."""
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: LocalRedisCluster) -> str:
    """The URL of one node of ``redis_cluster``, every master flushed before the test."""
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of a database on ``redis_server``, flushed before the test."""
    if not redis_server.running:  # a previous test stopped it and did not restart it
        redis_server.start()
    url = redis_server.url_for(next(_next_db) % _REDIS_DATABASES)
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        client.flushdb()
    return url


@pytest.fixture
def sync_client(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client of ``redis_url``'s database, closed after the test."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix unique to this test."""
    return f"t{uuid.uuid4().hex[:12]}"
