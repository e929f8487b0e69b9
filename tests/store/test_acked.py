"""Writes a replica must acknowledge (``redis_wait_replicas``): a real master and replica."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stocksync.codecs.state import OrderState, Position
from stocksync.daemon.services import RedisServer
from stocksync.store import RedisStore, StoreUnavailable, Write
from stocksync.store.layout import Keys
from tests.store.test_contract import GENERATION, TOPOLOGY

__all__: list[str] = []


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and its replica, the replica's link up."""
    with master_and_replica(tmp_path) as servers:
        yield servers


@contextlib.contextmanager
def master_and_replica(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and its replica, the replica's link up."""
    master = RedisServer(
        data_dir=tmp_path / "master", extra_args=["--repl-diskless-sync-delay", "0"]
    ).start()
    replica = RedisServer(
        data_dir=tmp_path / "replica", extra_args=["--replicaof", master.host, str(master.port)]
    ).start()
    try:
        with redis.Redis.from_url(replica.url) as client:
            for _ in range(200):
                if client.info("replication").get("master_link_status") == "up":
                    break
                asyncio.run(asyncio.sleep(0.05))
            else:
                raise AssertionError("the replica did not sync")
        yield master, replica
    finally:
        replica.stop()
        master.stop()


def _store(url: str, wait_timeout_ms: int = 5000) -> RedisStore:
    return RedisStore.from_url(
        url, Keys("t"), topology=TOPOLOGY, wait_replicas=1, wait_timeout_ms=wait_timeout_ms
    )


def test_a_write_counts_once_the_replica_has_it(
    replicated: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = replicated

    async def main() -> None:
        store = _store(master.url)
        try:
            await store.begin_generation(GENERATION)
            assert await store.write_batch([Write(Position(sku="A", version=1), 0)]) == []
            await store.save_states([OrderState(order_id="o1", channel="web", src="orders/0")])
        finally:
            await store.close()

    asyncio.run(main())
    # Acknowledged means on the replica already, not a moment later.
    with redis.Redis.from_url(replica.url) as client:
        assert client.hget(Keys("t").sku("A"), "v") == b"1"
        assert client.hget(Keys("t").order("o1"), "src") == b"orders/0"


def test_a_write_the_replica_does_not_acknowledge_is_unavailable_and_retried_exactly(
    replicated: tuple[RedisServer, RedisServer],
) -> None:
    """A replica that is attached but silent (stopped): the write happened on the master
    but does not count; the retry meets its own write as a conflict, as after any
    unacknowledged write, and the caller reloads."""
    master, replica = replicated
    assert replica.pid is not None

    async def main() -> None:
        store = _store(master.url, wait_timeout_ms=300)
        try:
            await store.begin_generation(GENERATION)
            os.kill(replica.pid, signal.SIGSTOP)
            try:
                with pytest.raises(StoreUnavailable, match="0 of 1 replica"):
                    await store.write_batch([Write(Position(sku="A", version=1), 0)])
            finally:
                os.kill(replica.pid, signal.SIGCONT)
            # Retried as the worker retries (the resumed replica may take a moment).
            for _ in range(100):
                try:
                    conflicts = await store.write_batch([Write(Position(sku="A", version=1), 0)])
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.05)
            assert conflicts == ["A"]
            assert await store.load_versions(["A"]) == {"A": 1}
        finally:
            await store.close()

    asyncio.run(main())


def test_a_master_without_replicas_left_is_enough(
    replicated: tuple[RedisServer, RedisServer],
) -> None:
    """After a failover the promoted master has no replica until the lost node is back:
    none can be promoted without the write, so the master's answer counts."""
    master, replica = replicated
    replica.stop()

    async def main() -> None:
        store = _store(master.url, wait_timeout_ms=300)
        try:
            await store.begin_generation(GENERATION)
            for _ in range(100):  # the master notices the closed link at once, or nearly
                try:
                    assert await store.write_batch([Write(Position(sku="A", version=1), 0)]) in (
                        [], ["A"])
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.05)
            assert await store.load_versions(["A"]) == {"A": 1}
        finally:
            await store.close()

    asyncio.run(main())
