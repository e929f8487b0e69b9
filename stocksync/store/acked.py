"""Script calls whose writes a replica has acknowledged (``WAIT``) before they count as done.

Redis replicates asynchronously: a write the master confirmed may be missing on
the replica that a failover promotes. The worker acks Kafka offsets once a batch
is written, so such a write would be lost for good (its events are never
delivered again). With ``redis_wait_replicas = N`` every write script of the
model and of the holds is followed, on the same connection, by
``WAIT N timeout``: the call only succeeds once N replicas have the write (or
every replica the master has, when it has fewer: then none can be promoted
without it, as after a failover until the lost node is back), and otherwise
raises :class:`~stocksync.store.protocol.StoreUnavailable`, so the caller
retries (the compare-and-set and the watermarks make that harmless).

``WAIT`` counts the writes of the connection that sends it, so the script and the
``WAIT`` go down one connection to the node that owns the keys' slot. A redirection
(a slot moved, a replica promoted) is not followed here: the cluster client is
asked for the key once, so it learns the new slot map, and the call fails as
unavailable; the caller's retry goes to the new owner.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from stocksync.store.multiplex import Multiplexed
from stocksync.store.protocol import StoreUnavailable

__all__ = ["call_acked", "evalsha_acked"]

_Errors = (RedisError, RedisClusterException, OSError)
#: A refusal to run here that a retry elsewhere (or a moment later) may not meet.
_REDIRECTED = (AskError, ClusterDownError, TryAgainError)  # MovedError is an AskError


def _pack(*parts: str | int | bytes) -> bytes:
    packed: bytes = hiredis.pack_command(cast("Any", parts))  # its stub takes a 1-tuple
    return packed


_ROLE = _pack("ROLE")


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


async def _exchange(connection: Any, command: bytes, wait: bytes) -> tuple[Any, int]:
    """Send the script and the WAIT at once; both replies (the script's error re-raised
    after the WAIT's reply was read, so the connection stays in step)."""
    await connection.send_packed_command(command + wait)
    failed: ResponseError | None = None
    reply: Any = None
    try:
        reply = await connection.read_response()
    except ResponseError as exc:  # a whole error reply: the WAIT's reply follows
        failed = exc
    acked = int(await connection.read_response())
    if failed is not None:
        raise failed
    return reply, acked


async def evalsha_acked(
    client: aioredis.Redis | RedisCluster,
    script: Any,
    keys: Sequence[str],
    args: Sequence[Any],
    *,
    replicas: int,
    timeout_ms: int,
) -> Any:
    """Run a registered ``script`` and wait until ``replicas`` replicas have its writes.

    Raises StoreUnavailable when fewer acknowledge within ``timeout_ms`` (the write
    may have happened: callers retry idempotently), when the node does not answer,
    or when the keys' slot is elsewhere now. Other errors of the script pass through.
    """
    command = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
    wait = _pack("WAIT", replicas, timeout_ms)
    if isinstance(client, RedisCluster):
        await client.initialize()  # a no-op once the slots are known
        node = client.get_node_from_key(keys[0])
        if node is None:
            raise StoreUnavailable(f"no node serves the slot of {keys[0]!r}")
        pool: Any = node
        connection = node.acquire_connection()
    else:
        pool = client.connection_pool
        connection = await pool.get_connection()
    try:
        try:
            reply, acked = await _exchange(connection, command, wait)
        except NoScriptError:
            await connection.send_packed_command(_pack("SCRIPT", "LOAD", script.script))
            await connection.read_response()
            reply, acked = await _exchange(connection, command, wait)
        attached = replicas
        if acked < replicas:
            # A master without (enough) replicas: none can be promoted without the write,
            # so those that are there having it is all a failover needs.
            await connection.send_packed_command(_ROLE)
            attached = _attached(await connection.read_response(), replicas)
    except _REDIRECTED as exc:
        await _learn_slots(client, keys[0])
        raise StoreUnavailable(f"the slot of {keys[0]!r} is not served here now: {exc}") from exc
    except ResponseError:
        raise
    except BaseException as exc:
        # A half-read reply would poison the next command on this connection.
        await connection.disconnect()
        if isinstance(exc, _Errors):
            await _learn_slots(client, keys[0])
            raise StoreUnavailable(f"a script call failed: {exc}") from exc
        raise
    finally:
        release = pool.release(connection)
        if release is not None:  # the single-Redis pool's release is a coroutine
            await release
    if acked < replicas and acked < attached:
        raise _short(acked, replicas, timeout_ms)
    return reply


def _short(acked: int, replicas: int, timeout_ms: int) -> StoreUnavailable:
    return StoreUnavailable(
        f"{acked} of {replicas} replica(s) acknowledged a write within {timeout_ms} ms"
        " (redis_wait_replicas); retrying it, so that a failover cannot lose it"
    )


def _attached(role: Any, replicas: int) -> int:
    """Replicas a master has (``ROLE``'s answer); ``replicas`` when not a master."""
    return len(role[2]) if _text(role[0]) == "master" else replicas


async def call_acked(
    pipe: Multiplexed, packed: bytes, *, replicas: int, timeout_ms: int
) -> Any:
    """One Redis (not a cluster): a packed script call on the process's pipelined
    connection, acknowledged by ``replicas`` replicas as :func:`evalsha_acked` is.

    The ``WAIT`` follows the turn's calls on that connection (one for them all, see
    :mod:`stocksync.store.multiplex`); ``NoScript`` and error answers of the script
    pass through as :meth:`Multiplexed.call` raises them.
    """
    reply, acked = await pipe.call_then(packed, _pack("WAIT", replicas, timeout_ms))
    if isinstance(acked, hiredis.ReplyError):
        raise StoreUnavailable(f"WAIT failed: {acked}")
    if int(acked) < replicas:
        role = await pipe.call(_ROLE)
        if int(acked) < _attached(role, replicas):
            raise _short(int(acked), replicas, timeout_ms)
    return reply


async def _learn_slots(client: aioredis.Redis | RedisCluster, key: str) -> None:
    """Let a cluster client follow the key once (a MOVED, a dead node): it then
    knows where the slot is for the retry."""
    if isinstance(client, RedisCluster):
        with contextlib.suppress(*_Errors):
            await client.type(key)
