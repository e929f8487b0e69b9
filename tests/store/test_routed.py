"""Script calls sent straight to their slot's node, one node's calls pipelined
(``store.routed``), on a real cluster.

The fast path trusts the client's cached slot map and its pooled connections;
each test makes one of them wrong and checks that the call still does exactly
what it would have done through redis-py's own cluster path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import redis
from redis.exceptions import ResponseError

from stocksync.codecs.state import Position
from stocksync.store import RedisStore, Write
from stocksync.store.layout import Keys
from stocksync.store.redis import RedisCluster
from stocksync.store.routed import evalsha_routed_all
from tests.store.test_contract import GENERATION, TOPOLOGY

__all__: list[str] = []

SKUS = [f"R-{i}" for i in range(40)]  # every shard of the 12 several times over


def _check(url: str, scenario: Callable[[RedisStore, RedisCluster], Awaitable[None]]) -> None:
    async def main() -> None:
        store = RedisStore.from_url(url, Keys("rt"), topology=TOPOLOGY, cluster=True)
        try:
            await store.begin_generation(GENERATION)
            first = [Write(Position(sku=s, version=1), 0) for s in SKUS]
            assert await store.write_batch(first) == []
            client = store.client
            assert isinstance(client, RedisCluster)
            await scenario(store, client)
        finally:
            await store.client.flushall()
            await store.close()

    asyncio.run(main())


async def _second_write_lands_once(store: RedisStore) -> None:
    """Version 2 of every SKU is written, none twice and none lost.

    A call sent again after its connection was closed under it (the cluster client
    closes a node's connections when it re-reads the slot map) may have run once
    already: the compare-and-set then refuses the repeat as a conflict, which the
    applier answers by reloading. So a conflict is allowed only for a SKU that the
    first run wrote.
    """
    conflicts = await store.write_batch([Write(Position(sku=s, version=2), 1) for s in SKUS])
    positions = await store.load_positions(SKUS)
    assert sorted(positions) == sorted(SKUS)
    assert {s: p.version for s, p in positions.items() if p.version != 2} == {}
    assert set(conflicts) <= {s for s, p in positions.items() if p.version == 2}


def test_a_node_that_lost_its_scripts_is_given_them_again(redis_cluster_url: str) -> None:
    async def scenario(store: RedisStore, client: RedisCluster) -> None:
        await client.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.PRIMARIES)
        await _second_write_lands_once(store)
        sha = store._scripts["WRITE_BATCH"].sha
        for node in client.get_primaries():
            assert await client.execute_command("SCRIPT EXISTS", sha, target_nodes=node) == [1]

    _check(redis_cluster_url, scenario)


def test_a_stale_slot_map_is_followed_to_the_slots_owner(redis_cluster_url: str) -> None:
    """Every slot cached as another master's: each call is answered MOVED, and the
    cluster client's path follows it; nothing is written twice or lost."""

    async def scenario(store: RedisStore, client: RedisCluster) -> None:
        primaries = client.get_primaries()
        await client.execute_command("CONFIG RESETSTAT", target_nodes=primaries)
        cache = client.nodes_manager.slots_cache
        for slot, nodes in list(cache.items()):
            owner = nodes[0]
            wrong = next(n for n in primaries if n.name != owner.name)
            cache[slot] = [wrong, *nodes[1:]]
        await _second_write_lands_once(store)
        moved = sum(
            int(stats.get("errorstat_MOVED", {}).get("count", 0))
            for stats in (await client.info("errorstats", target_nodes=primaries)).values()
        )
        assert moved > 0, "the calls were not sent to the stale owner first"

    _check(redis_cluster_url, scenario)


def test_connections_closed_by_the_server_are_replaced(redis_cluster_url: str) -> None:
    """Every pooled connection killed by the nodes (a restart, a proxy's idle timeout):
    the next call meets a dead socket, and is sent again on a new one."""

    async def scenario(store: RedisStore, client: RedisCluster) -> None:
        for node in client.get_primaries():
            with redis.Redis(host=node.host, port=node.port) as admin:
                admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await _second_write_lands_once(store)

    _check(redis_cluster_url, scenario)


def test_a_scripts_error_in_a_pipeline_is_raised_after_every_reply_is_read(
    redis_cluster_url: str,
) -> None:
    """One call of a node's pipeline fails in its script: that error is raised, and the
    node's connections still answer each later call with its own reply."""

    async def scenario(store: RedisStore, client: RedisCluster) -> None:
        script = client.register_script(
            "if ARGV[1] == 'bad' then return redis.error_reply('bad call') end"
            " return {KEYS[1], ARGV[1]}"
        )
        keys = [store.keys.sku(s) for s in SKUS]
        calls = [([k], ["bad" if i == 5 else str(i)]) for i, k in enumerate(keys)]
        with pytest.raises(ResponseError, match="bad call"):
            await evalsha_routed_all(client, script, calls)
        good = [([k], [str(i)]) for i, k in enumerate(keys)]
        for _ in range(3):
            assert await evalsha_routed_all(client, script, good) == [
                [k.encode(), str(i).encode()] for i, k in enumerate(keys)
            ]

    _check(redis_cluster_url, scenario)
