"""stocksync.compat.redis: a write to a transport closed under it is a ConnectionError."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError

from stocksync.compat import redis as compat_redis
from stocksync.daemon.services import RedisServer

__all__: list[str] = []


def test_the_installed_redis_py_is_the_one_the_adjustment_was_written_for() -> None:
    """A canary: upgrading redis-py fails here first, on purpose."""
    assert compat_redis.ACTIVE


def test_a_write_to_a_transport_closed_by_another_task_raises_connection_error(
    redis_server: RedisServer,
) -> None:
    """What the cluster client does to in-use connections on CLUSTERDOWN, on uvloop: the
    write meets a closed transport; the caller gets ConnectionError (retried as one)."""
    compat_redis.closed_transport_is_a_connection_error()

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        connection = client.connection_pool.make_connection()
        try:
            await connection.connect()
            connection._writer.transport.abort()  # as a concurrent close does
            await asyncio.sleep(0)
            with pytest.raises(RedisConnectionError, match="closed under a write"):
                await connection.send_packed_command(b"*1\r\n$4\r\nPING\r\n", check_health=False)
            assert not connection.is_connected
        finally:
            await connection.disconnect()
            await client.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_other_runtime_errors_pass_through() -> None:
    assert not compat_redis.transport_closed(RuntimeError("coroutine was never awaited"))
    assert compat_redis.transport_closed(RuntimeError(
        "unable to perform operation on <TCPTransport closed=True reading=False 0x1>;"
        " the handler is closed"
    ))


def test_a_write_to_a_connection_disconnected_after_its_connect_raises_connection_error(
    redis_server: RedisServer,
) -> None:
    """The other face of the same race: the writer is gone when the write starts."""
    compat_redis.closed_transport_is_a_connection_error()

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        connection = client.connection_pool.make_connection()
        try:
            await connection.connect()
            await connection.disconnect()
            connection.connect_check_health = _stay_disconnected  # type: ignore[method-assign]
            with pytest.raises(RedisConnectionError, match="closed under a write"):
                await connection.send_packed_command(b"*1\r\n$4\r\nPING\r\n", check_health=False)
        finally:
            await client.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


async def _stay_disconnected(*args: object, **kwargs: object) -> None:
    """A connect that another task's disconnect undid before the write."""
