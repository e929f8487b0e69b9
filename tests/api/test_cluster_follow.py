"""On a Redis Cluster a replica follows each shard's change stream with a blocking reader
of its own: woken by its stream when idle, all stopped by a reload entry on any shard,
backing off on its own node's errors, and one read per shard per block when idle."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from stocksync.api.model import AvailabilityModel, ModelSync
from stocksync.codecs.state import Position
from stocksync.daemon.services import LocalRedisCluster
from stocksync.readmodel import core
from stocksync.store import RedisStore, Write
from stocksync.store.generation import effective_namespace
from stocksync.store.layout import CLUSTER_SHARDS, Keys, reload_fields
from stocksync.store.redis import open_client
from tests.api.helpers import GENERATION, NAMESPACE, eventually, make_settings, run

__all__: list[str] = []

_KEYS = Keys(NAMESPACE, shards=CLUSTER_SHARDS)


def _one_per_shard(prefix: str) -> list[str]:
    """A SKU of each shard, in shard order."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < CLUSTER_SHARDS:
        found.setdefault(_KEYS.shard_of(f"{prefix}{i}"), f"{prefix}{i}")
        i += 1
    return [found[shard] for shard in range(CLUSTER_SHARDS)]


@contextlib.asynccontextmanager
async def _following(
    url: str, skus: list[str], **options: Any
) -> AsyncIterator[tuple[RedisStore, ModelSync]]:
    """A writer that wrote ``skus`` at version 1, and a started sync (ready) that follows it,
    on a client set up as the API's."""
    settings = msgspec.structs.replace(make_settings(url), redis_cluster=True)
    writer = RedisStore.from_url(
        url, Keys(NAMESPACE), topology=core.topology_of(settings), cluster=True
    )
    client = open_client(
        url, cluster=True, socket_timeout=5.0, socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 0),
    )
    sync = ModelSync(
        AvailabilityModel([c.name for c in settings.channels]), RedisStore(client, Keys(NAMESPACE)),
        **options,
    )
    try:
        await writer.begin_generation(GENERATION)
        assert await writer.write_batch([Write(Position(sku=s, version=1), 0) for s in skus]) == []
        await sync.start()
        await eventually(_true(lambda: sync.status().ready), timeout=10)
        yield writer, sync
    finally:
        await sync.stop()
        await client.aclose()
        await writer.close()


def _true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def checked() -> bool:
        return check()

    return checked


def _at(sync: ModelSync, version: int, *skus: str) -> Callable[[], Awaitable[bool]]:
    return _true(lambda: all(sync.model.version(s) == version for s in skus))


def _master_port(cluster: LocalRedisCluster, shard: int) -> int:
    return cluster.master_of(key_slot(_KEYS.changes(shard).encode())).port


def test_a_change_on_any_shard_reaches_an_idle_replica(redis_cluster_url: str) -> None:
    """Each reader waits on its own stream, so with reads that block for minutes every
    shard's change still arrives at once, whichever shard it is on (none waits behind
    another shard's blocked read)."""
    skus = _one_per_shard("F")

    async def scenario() -> None:
        async with _following(redis_cluster_url, skus, block_ms=600_000) as (writer, sync):
            await asyncio.sleep(0.2)  # every reader is in its blocking read
            for shard in (7, 0, 11, 3, 4, 10, 1, 8, 2, 6, 9, 5):
                sku = skus[shard]
                assert await writer.write_batch([Write(Position(sku=sku, version=2), 1)]) == []
                await eventually(_at(sync, 2, sku), timeout=10)
            assert all(sync.model.version(s) == 2 for s in skus)
            status = sync.status()
            assert status.ready
            assert status.applied_changes == CLUSTER_SHARDS
            assert status.reloads == 0

    run(scenario())


def test_a_reload_entry_on_one_shard_stops_every_reader_and_reloads(
    redis_cluster_url: str,
) -> None:
    """A rebuild's reload entry on one shard's stream alone: the other readers, blocked
    for minutes, are cancelled, the new generation is loaded, and every shard is then
    followed again on the cluster client's pool (a cancelled read broke no connection)."""
    old = _one_per_shard("OLD")
    new = _one_per_shard("NEW")
    rebuilt_generation = "g20261201T150000000Z"
    rebuilt_ns = effective_namespace(NAMESPACE, rebuilt_generation)

    async def scenario() -> None:
        # The monitor is kept out of it: only the reload entry can announce the switch.
        async with _following(
            redis_cluster_url, old, block_ms=600_000, monitor_interval=3600
        ) as (writer, sync):
            rebuilt = writer.beside(rebuilt_ns)
            await rebuilt.begin_generation(rebuilt_generation)
            writes = [Write(Position(sku=s, version=1), 0) for s in new]
            assert await rebuilt.write_batch(writes) == []
            await writer.client.set(_KEYS.generation(), rebuilt_generation)
            await asyncio.sleep(0.2)  # every reader is in its blocking read
            await writer.client.xadd(
                _KEYS.changes(5), reload_fields(rebuilt_ns, rebuilt_generation)  # type: ignore[arg-type]
            )

            def switched() -> bool:
                return all(sync.model.version(s) == 1 for s in new) and all(
                    s not in sync.model for s in old
                )

            await eventually(_true(switched), timeout=10)
            assert sync.status().reloads == 1
            await eventually(_true(lambda: sync.status().ready), timeout=10)
            assert sync.status().generation == rebuilt_generation
            later = [Write(Position(sku=s, version=2), 1) for s in new]
            assert await rebuilt.write_batch(later) == []
            await eventually(_at(sync, 2, *new), timeout=10)
            status = sync.status()
            assert status.reloads == 1
            assert status.redis_errors == 0

    run(scenario())


def test_redis_errors_on_one_node_back_off_there_and_recover(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str
) -> None:
    """One master refuses XREAD (and drops its connections, so the blocked reads fail at
    once): its shards' readers back off and the replica is not ready, while the other
    masters' shards are followed; once it reads again its shards catch up, no reload."""
    skus = _one_per_shard("E")
    down_port = _master_port(redis_cluster, 0)
    down = [s for s in range(CLUSTER_SHARDS) if _master_port(redis_cluster, s) == down_port]
    up = [s for s in range(CLUSTER_SHARDS) if s not in down]
    assert down and up
    node = next(n for n in redis_cluster.nodes if n.port == down_port)

    async def scenario() -> None:
        async with _following(
            redis_cluster_url, skus, block_ms=600_000, backoff_max=0.5
        ) as (writer, sync):
            with contextlib.closing(redis.Redis.from_url(node.url)) as admin:
                admin.execute_command("ACL", "SETUSER", "default", "-xread")
                try:
                    admin.execute_command("CLIENT", "KILL", "TYPE", "normal")  # not this one
                    await eventually(_true(lambda: not sync.status().connected), timeout=10)
                    assert not sync.status().ready
                    for shard in (*down, *up):
                        batch = [Write(Position(sku=skus[shard], version=2), 1)]
                        assert await writer.write_batch(batch) == []
                    await eventually(_at(sync, 2, *(skus[s] for s in up)), timeout=10)
                    await asyncio.sleep(0.5)  # a few more refused reads and back-offs
                    assert all(sync.model.version(skus[s]) == 1 for s in down)
                    assert not sync.status().connected
                finally:
                    admin.execute_command("ACL", "SETUSER", "default", "+xread")
            await eventually(_at(sync, 2, *skus), timeout=10)
            await eventually(_true(lambda: sync.status().ready), timeout=10)
            status = sync.status()
            assert status.connected
            assert status.redis_errors >= len(down)
            assert status.reloads == 0
            assert status.applied_changes == CLUSTER_SHARDS

    run(scenario())


def _xread_calls(cluster: LocalRedisCluster) -> int:
    """XREAD calls so far, every node summed."""
    total = 0
    for node in cluster.nodes:
        with contextlib.closing(redis.Redis.from_url(node.url)) as client:
            stats = client.info("commandstats")
        total += int(stats.get("cmdstat_xread", {}).get("calls", 0))
    return total


def test_an_idle_replica_reads_each_stream_once_per_block(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str
) -> None:
    """Idle, each shard's reader issues one XREAD per ``block_ms`` (12/s at 1 s), not one
    per shard every few milliseconds."""
    skus = _one_per_shard("I")

    async def scenario() -> None:
        async with _following(redis_cluster_url, skus, block_ms=1000) as (_writer, sync):
            await asyncio.sleep(0.5)  # caught up: every reader is in its blocking read
            before, started = _xread_calls(redis_cluster), time.monotonic()
            await asyncio.sleep(3.0)
            calls = _xread_calls(redis_cluster) - before
            elapsed = time.monotonic() - started
            assert sync.status().ready
        # Each reader reads again when its block ends: at most one read per second per
        # shard, plus the one under way (a poll made about 100 per shard per second).
        assert CLUSTER_SHARDS <= calls <= CLUSTER_SHARDS * (elapsed + 2)

    run(scenario())
