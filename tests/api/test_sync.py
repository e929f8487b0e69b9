"""The model follows Redis: live changes, lost Redis, trimmed or reset streams, old versions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis

from stocksync.api.model import ModelSync, _StreamInfo
from stocksync.codecs.state import Position
from stocksync.daemon.services import RedisServer
from stocksync.readmodel import core
from stocksync.store import RedisStore, Write
from stocksync.store.generation import effective_namespace
from stocksync.store.layout import Keys, reload_fields
from tests.api.helpers import (
    GENERATION,
    NAMESPACE,
    Client,
    TcpProxy,
    eventually,
    is_ready,
    make_settings,
    metric_value,
    projection,
    run,
    serving,
    version_of,
    write,
)


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        yield client


async def _status(client: Client, path: str) -> int:
    async with client.get(path) as resp:
        return resp.status


def test_follows_live_changes(redis_url: str, store: redis.Redis) -> None:
    write(store, projection("A", 1))

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            assert await version_of(client, "A") == 1
            started = time.monotonic()
            write(store, projection("A", 2), projection("NEW", 1))

            async def seen() -> bool:
                return await version_of(client, "A") == 2 and await version_of(client, "NEW") == 1

            await eventually(seen, interval=0.001)
            assert time.monotonic() - started < 0.5
            assert await metric_value(client, "stocksync_api_changes_applied_total") == 2

    run(scenario())


def test_a_version_never_goes_backwards(redis_url: str, store: redis.Redis) -> None:
    write(store, projection("A", 5))

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            write(store, projection("A", 3, available=99), projection("B", 1))
            await eventually(lambda: _has(client, "B"))
            assert await version_of(client, "A") == 5
            write(store, projection("A", 6))
            await eventually(lambda: _is(client, "A", 6))

    run(scenario())


async def _has(client: Client, sku: str) -> bool:
    return await version_of(client, sku) is not None


async def _is(client: Client, sku: str, version: int) -> bool:
    return await version_of(client, sku) == version


def test_survives_a_redis_restart(
    redis_server: RedisServer, redis_url: str, store: redis.Redis
) -> None:
    write(store, projection("A", 1))

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            redis_server.stop()
            try:

                async def not_ready() -> bool:
                    return await _status(client, "/readyz") == 503

                await eventually(not_ready, timeout=5)
                # The last known model is still served meanwhile.
                assert await version_of(client, "A") == 1
                assert await metric_value(client, "stocksync_api_redis_connected") == 0
            finally:
                redis_server.start()

            async def ready() -> bool:
                return await _status(client, "/readyz") == 200

            await eventually(ready, timeout=10)
            write(store, projection("A", 2))
            await eventually(lambda: _is(client, "A", 2))
            # The stream outlived the restart: resumed from our id, no reload.
            assert await metric_value(client, "stocksync_api_model_reloads_total") == 0
            assert await metric_value(client, "stocksync_api_redis_errors_total") > 0

    run(scenario())


def test_reloads_after_the_stream_was_trimmed_past_it(
    redis_server: RedisServer, redis_url: str, store: redis.Redis
) -> None:
    write(store, *(projection(f"S{i}", 1) for i in range(5)))
    db = int(redis_url.rsplit("/", 1)[1])

    async def scenario() -> None:
        async with TcpProxy(redis_server.port) as proxy:
            settings = make_settings(f"redis://127.0.0.1:{proxy.port}/{db}")
            async with serving(settings) as client:
                proxy.hold()
                # 50 changes, of which the stream keeps only the last 10, while
                # the API cannot read: 40 changes exist only in the hashes.
                for i in range(50):
                    write(store, projection(f"S{i}", 2), maxlen=10)
                proxy.release()

                async def all_current() -> bool:
                    for i in range(50):
                        if await version_of(client, f"S{i}") != 2:
                            return False
                    return True

                await eventually(all_current, timeout=10)
                assert await metric_value(client, "stocksync_api_model_reloads_total") == 1
                assert await _status(client, "/readyz") == 200

    run(scenario())


def test_reloads_after_the_stream_was_reset(redis_url: str, store: redis.Redis) -> None:
    write(store, projection("A", 3))

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            store.flushdb()
            write(store, projection("B", 1))

            async def reloaded() -> bool:
                return await metric_value(client, "stocksync_api_model_reloads_total") == 1

            await eventually(reloaded, timeout=5)
            await eventually(lambda: _is(client, "B", 1))
            assert await version_of(client, "A") == 3  # the last known answer is kept

    run(scenario())


def _info(**fields: Any) -> _StreamInfo:
    defaults: dict[str, Any] = {
        "exists": True,
        "last_generated": (10, 0),
        "entries_added": 10,
        "length": 10,
        "first_entry": (1, 0),
        "max_deleted": (0, 0),
    }
    return _StreamInfo(**{**defaults, **fields})


@pytest.mark.parametrize(
    ("info", "last", "count", "lost"),
    [
        (_info(), (10, 0), 10, False),  # caught up
        (_info(), (5, 0), 5, False),  # behind, nothing lost
        (_info(exists=False), (0, 0), 0, False),  # no stream yet
        (_info(exists=False), (5, 0), 5, True),  # stream deleted
        (_info(last_generated=(4, 0)), (5, 0), 5, True),  # stream reset
        (_info(max_deleted=(7, 0)), (5, 0), 5, True),  # XDEL after our id
        (_info(max_deleted=(3, 0)), (5, 0), 5, False),  # XDEL of what we read
        (_info(first_entry=(8, 0), length=3), (5, 0), 5, True),  # trimmed past us
        (_info(first_entry=(6, 0), length=5), (5, 0), 5, False),  # trimmed up to us
        (_info(entries_added=12), (10, 0), 10, True),  # read past a gap, caught up
        (_info(entries_added=8), (10, 0), 10, True),  # recreated
    ],
)
def test_lost_entries_rules(
    info: _StreamInfo, last: tuple[int, int], count: int, lost: bool
) -> None:
    assert (ModelSync._lost_entries(info, last, count) is not None) is lost


def test_follows_a_generation_switch_and_its_rollback(redis_url: str, store: redis.Redis) -> None:
    base = Keys(NAMESPACE)
    write(store, projection("A", 5), projection("B", 1))

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            # What `stocksync rebuild` does: a full model in a new key space,
            # the pointer switched, a reload entry on the old stream.
            new_ns = effective_namespace(NAMESPACE, "g20261127T090003123Z")
            write(store, projection("A", 2), projection("C", 1), namespace=new_ns,
                  generation="g20261127T090003123Z")
            store.set(base.generation(), "g20261127T090003123Z")
            store.xadd(base.changes(), reload_fields(new_ns, "g20261127T090003123Z"))  # type: ignore[arg-type]

            async def switched() -> bool:
                return await _is(client, "C", 1) and not await _has(client, "B")

            await eventually(switched)
            assert await version_of(client, "A") == 2  # the new generation wins, even if lower
            assert await metric_value(client, "stocksync_api_model_reloads_total") == 1
            await eventually(lambda: is_ready(client))
            write(store, projection("A", 3), namespace=new_ns,
                  generation="g20261127T090003123Z")
            await eventually(lambda: _is(client, "A", 3))

            # A rollback only moves the pointer back.
            store.delete(base.generation())

            async def rolled_back() -> bool:
                return await _is(client, "A", 5) and not await _has(client, "C")

            await eventually(rolled_back)
            assert await version_of(client, "B") == 1

    run(scenario())


async def _lost(client: Client) -> bool:
    async with client.get("/readyz") as resp:
        if resp.status != 503:
            return False
        code: str = msgspec.json.decode(await resp.read())["error"]["code"]
        return code == "model_lost"


def test_a_lost_model_is_served_until_the_rebuilt_one_is_live(
    redis_url: str, store: redis.Redis
) -> None:
    write(store, projection("A", 5), projection("B", 1))
    rebuilt = "g20261127T090003123Z"

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            assert await metric_value(client, "stocksync_model_lost") == 0
            store.flushdb()  # what a Redis restarted without persistence holds
            await eventually(lambda: _lost(client))
            assert await metric_value(client, "stocksync_model_lost") == 1
            assert await version_of(client, "A") == 5  # the last model, meanwhile
            async with serving(make_settings(redis_url), ready=False) as fresh:
                await eventually(lambda: _lost(fresh))
                assert not await _has(fresh, "A")
                # A worker rebuilds the model into a new generation and switches to it.
                new_ns = effective_namespace(NAMESPACE, rebuilt)
                write(store, projection("A", 1), projection("C", 1), namespace=new_ns,
                      generation=rebuilt)
                store.set(Keys(NAMESPACE).generation(), rebuilt)
                for replica in (client, fresh):
                    await eventually(lambda r=replica: _is(r, "C", 1))  # type: ignore[misc]
                    assert await version_of(replica, "A") == 1
                    assert not await _has(replica, "B")
                    await eventually(lambda r=replica: is_ready(r))  # type: ignore[misc]
                    assert await metric_value(replica, "stocksync_model_lost") == 0

    run(scenario())


def test_loads_and_follows_every_shard_of_a_redis_cluster(redis_cluster_url: str) -> None:
    settings = msgspec.structs.replace(make_settings(redis_cluster_url), redis_cluster=True)
    first = [f"SKU-{i}" for i in range(300)]

    async def scenario() -> None:
        store = RedisStore.from_url(
            redis_cluster_url, Keys(NAMESPACE), topology=core.topology_of(settings), cluster=True
        )
        try:
            await store.begin_generation(GENERATION)
            writes = [Write(Position(sku=s, version=1), 0) for s in first]
            assert await store.write_batch(writes) == []
            async with serving(settings, ready=False) as client:
                await eventually(lambda: _status_is(client, "/readyz", 200), timeout=10)
                assert {await version_of(client, s) for s in first} == {1}
                later = [Write(Position(sku=s, version=2), 1) for s in first]
                later.append(Write(Position(sku="NEW", version=1), 0))
                assert await store.write_batch(later) == []

                async def seen() -> bool:
                    return await version_of(client, "NEW") == 1 and all(
                        [await version_of(client, s) == 2 for s in first]
                    )

                await eventually(seen, timeout=5)
                assert await metric_value(client, "stocksync_api_changes_applied_total") == 301
        finally:
            await store.close()

    run(scenario())


async def _status_is(client: Client, path: str, status: int) -> bool:
    return await _status(client, path) == status


def test_stopping_leaves_no_reader_even_one_that_swallows_cancellations(
    redis_url: str, store: redis.Redis
) -> None:
    """A shard reader whose cancellations come back as a Redis error (redis-py turns a
    cancellation that meets its socket timeout into its own TimeoutError) is not left
    running when the sync stops: stop() cancels the follower again while the follower
    is still ending its readers, and a reader left behind would read for ever."""
    from stocksync.api.model import AvailabilityModel
    from stocksync.store import StoreUnavailable

    write(store, projection("A", 1))

    async def scenario() -> None:
        settings = make_settings(redis_url)
        redis_store = RedisStore.from_url(redis_url, Keys(NAMESPACE))
        sync = ModelSync(AvailabilityModel([c.name for c in settings.channels]), redis_store,
                         block_ms=50, backoff_min=0.01, backoff_max=0.02)
        read = redis_store.read_changes
        swallowed = 0

        async def stubborn(*args: Any, **kwargs: Any) -> Any:
            nonlocal swallowed
            try:
                return await read(*args, **kwargs)
            except asyncio.CancelledError:
                swallowed += 1
                raise StoreUnavailable("the read timed out") from None

        redis_store.read_changes = stubborn  # type: ignore[method-assign]
        try:
            await sync.start()
            await eventually(lambda: _ready(sync), timeout=10)
            await sync.stop()
            await asyncio.sleep(0.3)  # a reader left behind would be reading again
            left = [t for t in asyncio.all_tasks()
                    if t.get_name().startswith("stocksync-api-follow") and not t.done()]
            assert swallowed >= 1
            assert left == [], left
        finally:
            for task in asyncio.all_tasks():
                if task.get_name().startswith("stocksync-api-follow"):
                    task.cancel()
            await redis_store.close()

    run(scenario())


async def _ready(sync: ModelSync) -> bool:
    return sync.status().ready
