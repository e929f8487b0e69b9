"""Script calls on a Redis Cluster, packed by hiredis and sent to their slot's node.

redis-py's cluster client runs a command in pure Python: it packs every argument
and, for ``EVALSHA``, hashes every key to check that they share a slot. The
applier's batch write is one call of up to WRITE_CHUNK SKUs with seven arguments
each; on a cluster that Python work cost more worker CPU than the batch itself.

:func:`evalsha_routed` packs the call in C (as the single-Redis path does) and
sends it on a connection of the node that the client's slot map gives for the
first key (the keys of one call share a shard tag, so one slot). Whatever that
cached map cannot answer goes through the cluster client's own path, which
follows MOVED and ASK, re-reads the slot map after a dead node or CLUSTERDOWN
and retries: a redirection, a refused or broken connection, a full pool, a slot
nobody serves. A call re-sent that way after its connection broke may have run
once already, as with redis-py's own retries; every script sent here is
idempotent or compare-and-set (the callers' watermarks and versions make the
second run a no-op or a conflict that they reload from).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from stocksync.compat import redis as compat_redis

__all__ = ["evalsha_routed", "evalsha_routed_all"]

#: Answers the cluster client's own path knows how to follow (MovedError is an AskError).
_REDIRECTED = (AskError, ClusterDownError, TryAgainError)
#: The connection is gone or unusable; the cluster client's path reconnects or re-routes.
_BROKEN = (RedisConnectionError, RedisTimeoutError, OSError)


async def evalsha_routed(
    client: RedisCluster, script: Any, keys: Sequence[str], args: Sequence[Any]
) -> Any:
    """Run the registered ``script`` (a redis-py ``Script``) on the node of ``keys[0]``'s slot.

    Errors of the script itself (a ``ResponseError`` reply) pass through, as from
    ``script(keys=..., args=...)``; anything the slot map or the connection made
    fail is retried through that call, so it raises what redis-py raises there.
    """
    if not compat_redis.ACTIVE:  # another redis-py: its own cluster path, as before
        return await script(keys=keys, args=args)
    await client.initialize()  # a no-op once the slots are known
    node = connection = None
    try:
        node = client.get_node_from_key(keys[0])
        if node is not None:
            connection = node.acquire_connection()
    except (SlotNotCoveredError, MaxConnectionsError, RedisClusterException):
        pass  # the cluster client's path says what to do (re-read the slots, or fail)
    if node is None or connection is None:
        return await script(keys=keys, args=args)
    packed = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
    try:
        await node.disconnect_if_needed(connection)
        try:
            await connection.send_packed_command(packed)
            return await connection.read_response()
        except NoScriptError:
            # This node has not seen the script (a new node, a restart, a promoted
            # replica that never ran it): load it here, then send the call again.
            await connection.send_packed_command(
                hiredis.pack_command(cast("Any", ("SCRIPT", "LOAD", script.script)))
            )
            await connection.read_response()
            await connection.send_packed_command(packed)
            return await connection.read_response()
    except MovedError as exc:
        await compat_redis.learn_moved(client, exc)  # a whole reply: the connection is in step
    except _REDIRECTED:
        pass  # a whole error reply: the connection is in step; the slot is elsewhere now
    except ResponseError:
        raise  # the script's own error, a whole reply: the connection is in step
    except _BROKEN:
        await connection.disconnect()
    except BaseException:
        # A half-read reply (a cancelled call) would poison the next command here.
        await connection.disconnect()
        raise
    finally:
        node.release(connection)
    return await script(keys=keys, args=args)


async def evalsha_routed_all(
    client: RedisCluster, script: Any, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
) -> list[Any]:
    """Every call's reply, in order: the calls of one node pipelined on one of its
    connections (one write, one read of all the replies), every node at once.

    A batch on a cluster is one call per shard, 12 of them on 3 masters: sent one
    by one they cost a task, a send and a read each, on the worker and on Redis.
    A call the pipeline cannot answer (redirected, a node without the script, a
    connection broken before its reply) is run again on its own through
    :func:`evalsha_routed`; a script's own error is raised once every reply of
    its connection is read (the connection stays in step).
    """
    if not compat_redis.ACTIVE or len(calls) < 2:
        return list(
            await asyncio.gather(*(evalsha_routed(client, script, k, a) for k, a in calls))
        )
    await client.initialize()  # a no-op once the slots are known
    replies: list[Any] = [None] * len(calls)
    again: list[int] = []
    by_node: dict[str, tuple[Any, list[int]]] = {}
    for i, (keys, _) in enumerate(calls):
        try:
            node = client.get_node_from_key(keys[0])
        except (SlotNotCoveredError, RedisClusterException):
            node = None
        if node is None:
            again.append(i)
        else:
            by_node.setdefault(node.name, (node, []))[1].append(i)
    failed: list[ResponseError] = []

    async def on(node: Any, indexes: list[int]) -> None:
        try:
            connection = node.acquire_connection()
        except MaxConnectionsError:
            again.extend(indexes)
            return
        packed = b"".join(
            hiredis.pack_command(("EVALSHA", script.sha, len(calls[i][0]), *calls[i][0],
                                  *calls[i][1]))
            for i in indexes
        )
        read = 0
        try:
            await node.disconnect_if_needed(connection)
            await connection.send_packed_command(packed)
            for i in indexes:
                try:
                    replies[i] = await connection.read_response()
                except MovedError as exc:
                    await compat_redis.learn_moved(client, exc)
                    again.append(i)
                except (NoScriptError, *_REDIRECTED):
                    again.append(i)  # a whole error reply: the next one follows
                except ResponseError as exc:
                    failed.append(exc)  # the script's own error: read the rest first
                read += 1
        except _BROKEN:
            await connection.disconnect()
            again.extend(indexes[read:])  # sent, maybe run: run again (idempotent or CAS)
        except BaseException:
            # A half-read reply (a cancelled call) would poison the next command here.
            await connection.disconnect()
            raise
        finally:
            node.release(connection)

    await asyncio.gather(*(on(node, indexes) for node, indexes in by_node.values()))
    if failed:
        raise failed[0]
    if again:
        redone = await asyncio.gather(
            *(evalsha_routed(client, script, *calls[i]) for i in again)
        )
        for i, reply in zip(again, redone, strict=True):
            replies[i] = reply
    return replies
