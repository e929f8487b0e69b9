"""The pipelined connection of the hold calls, against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import hiredis
import pytest
import redis
import redis.asyncio as aioredis
import uvloop

from stocksync.compat import redis as compat_redis
from stocksync.daemon.services import RedisServer
from stocksync.store import StoreError, StoreUnavailable
from stocksync.store.multiplex import Multiplexed, NoScript

T = TypeVar("T")

pytestmark = pytest.mark.timeout(60)


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(30):
            return await coro

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


def cmd(*parts: Any) -> bytes:
    return hiredis.pack_command(parts)


def test_the_installed_redis_py_is_the_one_the_takeover_was_written_for() -> None:
    """A canary: upgrading redis-py fails here first, on purpose."""
    assert compat_redis.ACTIVE


@pytest.mark.parametrize("takeover", [True, False], ids=["pipelined", "pooled"])
def test_concurrent_calls_each_get_their_own_answer(
    redis_url: str, takeover: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compat_redis, "ACTIVE", takeover)

    async def scenario() -> list[Any]:
        client = aioredis.Redis.from_url(redis_url)
        pipe = Multiplexed(client, timeout=5.0)
        try:
            # Batches written in one turn and calls spread over many turns, mixed.
            first = await asyncio.gather(*(pipe.call(cmd("ECHO", f"v{i}")) for i in range(300)))
            later = [await pipe.call(cmd("INCRBY", "counter", i)) for i in range(1, 4)]
            return [*first, *later]
        finally:
            await pipe.close()
            await client.aclose()

    answers = run(scenario())
    assert answers[:300] == [f"v{i}".encode() for i in range(300)]
    assert answers[300:] == [1, 3, 6]


def test_calls_use_the_database_and_credentials_of_the_client_url(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url_for(7)
    with redis.Redis.from_url(url) as sync:
        sync.flushdb()

    async def scenario() -> None:
        client = aioredis.Redis.from_url(url)
        pipe = Multiplexed(client, timeout=5.0)
        try:
            assert await pipe.call(cmd("SET", "in-seven", "yes")) == b"OK"
        finally:
            await pipe.close()
            await client.aclose()

    run(scenario())
    with redis.Redis.from_url(url) as sync:
        assert sync.get("in-seven") == b"yes"
    with redis.Redis.from_url(redis_server.url_for(0)) as other:
        assert other.get("in-seven") is None


@pytest.mark.parametrize("takeover", [True, False], ids=["pipelined", "pooled"])
def test_error_answers_fail_only_their_call(
    redis_url: str, takeover: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compat_redis, "ACTIVE", takeover)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        pipe = Multiplexed(client, timeout=5.0)
        try:
            missing = pipe.call(cmd("EVALSHA", "0" * 40, 0))
            wrong = pipe.call(cmd("INCR", "text"))
            fine = pipe.call(cmd("ECHO", "after"))
            await pipe.call(cmd("SET", "text", "abc"))
            results = await asyncio.gather(missing, wrong, fine, return_exceptions=True)
            assert isinstance(results[0], NoScript)
            assert isinstance(results[1], StoreError) and not isinstance(results[1], NoScript)
            assert results[2] == b"after"
        finally:
            await pipe.close()
            await client.aclose()

    run(scenario())


def test_a_lost_connection_fails_the_waiting_calls_and_the_next_call_reconnects(
    tmp_path: Path,
) -> None:
    server = RedisServer(data_dir=tmp_path / "redis")
    server.start()
    try:

        async def scenario() -> None:
            client = aioredis.Redis.from_url(server.url_for(0))
            pipe = Multiplexed(client, timeout=5.0)
            try:
                assert await pipe.call(cmd("PING")) == b"PONG"
                # Killed from another connection while these wait behind a blocking call.
                blocked = asyncio.ensure_future(pipe.call(cmd("BLPOP", "never", 0)))
                behind = asyncio.ensure_future(pipe.call(cmd("PING")))
                await asyncio.sleep(0.2)
                with redis.Redis.from_url(server.url_for(0)) as admin:
                    admin.client_kill_filter(_type="normal", skipme=True)
                for waiting in (blocked, behind):
                    with pytest.raises(StoreUnavailable):
                        await waiting
                assert await pipe.call(cmd("PING")) == b"PONG"
            finally:
                await pipe.close()
                await client.aclose()

        run(scenario())
    finally:
        server.stop()


def test_an_unanswered_call_fails_as_unavailable_and_the_link_is_replaced(
    redis_url: str,
) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        pipe = Multiplexed(client, timeout=0.3)
        try:
            # Redis answers in order: a command stuck at the head holds up the rest.
            stuck = asyncio.ensure_future(pipe.call(cmd("BLPOP", "never", 0)))
            behind = asyncio.ensure_future(pipe.call(cmd("PING")))
            for waiting in (stuck, behind):
                with pytest.raises(StoreUnavailable, match="did not answer"):
                    await waiting
            assert await pipe.call(cmd("PING")) == b"PONG"
        finally:
            await pipe.close()
            await client.aclose()

    run(scenario())


def test_an_unreachable_redis_is_unavailable(tmp_path: Path) -> None:
    server = RedisServer(data_dir=tmp_path / "redis")
    server.start()
    url = server.url_for(0)
    server.stop()

    async def scenario() -> None:
        client = aioredis.Redis.from_url(url)
        pipe = Multiplexed(client, timeout=2.0)
        try:
            with pytest.raises(StoreUnavailable):
                await pipe.call(cmd("PING"))
        finally:
            await pipe.close()
            await client.aclose()

    run(scenario())


def test_a_false_answer_is_an_answer_on_resp3(redis_url: str) -> None:
    async def scenario() -> list[Any]:
        client = aioredis.Redis.from_url(redis_url, protocol=3)
        pipe = Multiplexed(client, timeout=5.0)
        try:
            return list(
                await asyncio.gather(
                    pipe.call(cmd("EVAL", "redis.setresp(3) return false", 0)),
                    pipe.call(cmd("ECHO", "next")),
                )
            )
        finally:
            await pipe.close()
            await client.aclose()

    assert run(scenario()) == [False, b"next"]


@pytest.mark.parametrize("takeover", [True, False], ids=["pipelined", "pooled"])
def test_one_command_follows_every_call_of_a_turn(
    redis_url: str, takeover: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``call_then``: the command sent after the turn's calls (the WAIT of the hold
    writes) goes out once behind all of them, on the pipelined connection."""
    monkeypatch.setattr(compat_redis, "ACTIVE", takeover)

    async def scenario() -> list[tuple[Any, Any]]:
        client = aioredis.Redis.from_url(redis_url)
        pipe = Multiplexed(client, timeout=5.0)
        try:
            await pipe.call(cmd("PING"))  # connected: the calls below go out in one turn
            turn = await asyncio.gather(*(
                pipe.call_then(cmd("RPUSH", "log", f"w{i}"), cmd("RPUSH", "log", "after"))
                for i in range(5)
            ))
            with pytest.raises(StoreError, match="WRONGTYPE"):
                await pipe.call_then(cmd("INCR", "log"), cmd("LLEN", "log"))
            return turn
        finally:
            await pipe.close()
            await client.aclose()

    turn = run(scenario())
    with redis.Redis.from_url(redis_url) as check:
        log = check.lrange("log", 0, -1)
    if takeover:
        assert log == [b"w0", b"w1", b"w2", b"w3", b"w4", b"after"]
        assert turn == [(i + 1, 6) for i in range(5)]
    else:  # one connection per call: each call's own command after it
        assert sorted(log) == sorted([*(f"w{i}".encode() for i in range(5)), *[b"after"] * 5])
        assert all(after == reply + 1 for reply, after in turn)
