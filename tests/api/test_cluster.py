"""An API replica on a Redis Cluster keeps following while a slot holding data moves."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import msgspec
import redis
from redis.crc import key_slot

from stocksync.codecs.state import Position
from stocksync.daemon.services import LocalRedisCluster
from stocksync.readmodel import core
from stocksync.store import RedisStore, StoreUnavailable, Write
from stocksync.store.layout import CLUSTER_SHARDS, Keys
from tests.api.helpers import (
    GENERATION,
    NAMESPACE,
    eventually,
    is_ready,
    make_settings,
    metric_value,
    run,
    serving,
    version_of,
)

__all__: list[str] = []


def _node_of(cluster: LocalRedisCluster, slot: int) -> tuple[str, str]:
    """(node id, url) of the master serving ``slot``."""
    with contextlib.closing(redis.Redis.from_url(cluster.url)) as client:
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                host, port, node_id = master[0].decode(), master[1], master[2].decode()
                return node_id, f"redis://{host}:{port}/0"
    raise AssertionError(f"no master serves slot {slot}")


def _move_slot(cluster: LocalRedisCluster, slot: int, pause: float) -> str:
    """Move ``slot`` and its keys to another master, key by key, as redis-cli does."""
    source_id, _ = _node_of(cluster, slot)
    masters = [n for n in cluster.nodes if n.running]
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(contextlib.closing(redis.Redis.from_url(n.url)))
                   for n in masters]
        ids = [c.execute_command("CLUSTER", "MYID").decode() for c in clients]
        target = next(i for i, node_id in enumerate(ids) if node_id != source_id)
        source = clients[ids.index(source_id)]
        host, port = LocalRedisCluster.address(masters[target]).split(":")
        clients[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        while True:
            keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 3)
            if not keys:
                break
            source.execute_command("MIGRATE", host, int(port), "", 0, 5000, "KEYS", *keys)
            threading.Event().wait(pause)  # writes and reads meet a half-moved slot
        for client in clients:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    return ids[target]


def test_a_resharding_loses_no_change(
    redis_cluster: LocalRedisCluster, redis_cluster_url: str
) -> None:
    """While a shard's slot (its SKUs, change stream and marker) moves to another master,
    the writer keeps writing and the replica keeps following: every change is applied
    once, no reload, and the replica ends with every SKU's last version."""
    settings = msgspec.structs.replace(make_settings(redis_cluster_url), redis_cluster=True)
    keys = Keys(NAMESPACE, shards=CLUSTER_SHARDS)
    slot = key_slot(keys.changes(0).encode())
    skus = [f"R{i}" for i in range(400)]
    in_shard = [s for s in skus if keys.shard_of(s) == 0]
    assert len(in_shard) > 10
    rounds = 40

    async def scenario() -> None:
        store = RedisStore.from_url(
            redis_cluster_url, Keys(NAMESPACE), topology=core.topology_of(settings), cluster=True
        )
        try:
            await store.begin_generation(GENERATION)
            writes = [Write(Position(sku=s, version=1), 0) for s in skus]
            assert await store.write_batch(writes) == []
            async with serving(settings, ready=False) as client:
                await eventually(lambda: is_ready(client), timeout=10)
                moving = asyncio.ensure_future(
                    asyncio.to_thread(_move_slot, redis_cluster, slot, 0.02)
                )
                for version in range(2, rounds + 1):
                    batch = [Write(Position(sku=s, version=version), version - 1) for s in skus]
                    while True:  # a half-moved slot may refuse a call: retried as the worker does
                        try:
                            assert await store.write_batch(batch) == []
                            break
                        except StoreUnavailable:
                            # Shards that were written are skipped, as the watermarks would.
                            done = await _written(store, version, batch)
                            batch = [w for w in batch if w.position.sku not in done]
                            await asyncio.sleep(0.01)
                    await asyncio.sleep(0.01)
                target = await moving
                assert _node_of(redis_cluster, slot)[0] == target

                async def caught_up() -> bool:
                    return all([await version_of(client, s) == rounds for s in skus])

                await eventually(caught_up, timeout=10)
                applied = await metric_value(client, "stocksync_api_changes_applied_total")
                assert applied == len(skus) * (rounds - 1)
                assert await metric_value(client, "stocksync_api_model_reloads_total") == 0
        finally:
            await store.close()

    run(scenario())


async def _written(store: RedisStore, version: int, batch: list[Write]) -> set[str]:
    """The SKUs of ``batch`` already at ``version`` (a failed call may have written some).

    The read meets the half-moved slot too (redis-py's pipeline may give up on its
    redirections: "TTL exhausted"), and is retried as the write is."""
    while True:
        try:
            found = await store.load_versions([w.position.sku for w in batch])
        except StoreUnavailable:
            await asyncio.sleep(0.01)
            continue
        return {sku for sku, v in found.items() if v >= version}
