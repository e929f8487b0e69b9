"""Holds across API processes and restarts: exact under a race, durable through Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections import Counter

import aiohttp
import msgspec
import pytest
import redis

from stocksync.daemon.services import RedisServer, free_port
from tests.api.helpers import (
    ApiProcess,
    TcpProxy,
    eventually,
    make_settings,
    projection,
    run,
    serving,
    write,
)

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("on_cluster", [False, True], ids=["redis", "redis-cluster"])
def test_200_concurrent_holds_on_10_units_through_two_processes_grant_exactly_10(
    request: pytest.FixtureRequest, on_cluster: bool
) -> None:
    """Also on a Redis Cluster, with half the holds two-line ones whose other SKU is in
    another shard (decided shard group by shard group there): never more than 10."""
    url = request.getfixturevalue("redis_cluster_url" if on_cluster else "redis_url")
    client: redis.Redis | redis.RedisCluster = (
        redis.RedisCluster.from_url(url) if on_cluster else redis.Redis.from_url(url)
    )
    with contextlib.closing(client):
        write(client, projection("LAST-10", 1, available=10))
        write(client, projection("MANY", 1, available=1000))
    assert zlib.crc32(b"MANY") % 12 < zlib.crc32(b"LAST-10") % 12
    settings = make_settings(url, port=free_port(), redis_cluster=on_cluster)

    async def race(url: str) -> tuple[Counter[int], set[str], dict[str, int]]:
        connector = aiohttp.TCPConnector(limit=200, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(i: int) -> tuple[int, str]:
                lines = [{"sku": "LAST-10", "qty": 1}]
                if i % 2:  # MANY's shard comes first: granted, then undone when LAST-10 is short
                    lines.append({"sku": "MANY", "qty": 1})
                body = {"hold_id": f"cart-{i}", "channel": "web", "lines": lines}
                async with session.post(url + "/v1/holds", json=body) as resp:
                    await resp.read()
                    return resp.status, resp.headers["X-Correlation-ID"].split("-")[0]

            results = await asyncio.gather(*(one(i) for i in range(200)))

            granted_pairs = sum(
                1 for i, (status, _) in enumerate(results) if status == 201 and i % 2
            )

            async def settled() -> bool:
                async with session.get(url + "/v1/availability/LAST-10?channel=web") as resp:
                    body = msgspec.json.decode(await resp.read())
                async with session.get(url + "/v1/availability/MANY?channel=web") as resp:
                    plenty = msgspec.json.decode(await resp.read())
                return bool(body["held"] == 10 and plenty["held"] == granted_pairs)

            await eventually(settled, timeout=5)
            async with session.get(url + "/v1/availability/LAST-10?channel=web") as resp:
                figures = msgspec.json.decode(await resp.read())
        return Counter(s for s, _ in results), {p for _, p in results}, figures

    with ApiProcess(settings, processes=2) as api:
        statuses, processes, figures = run(race(api.url))
    assert statuses == {201: 10, 409: 190}
    assert len(processes) == 2, "both processes answered holds"
    assert (figures["available"], figures["held"]) == (0, 10)


def test_holds_survive_a_restart_of_redis_and_of_the_api(
    redis_server: RedisServer, redis_url: str
) -> None:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        write(client, projection("A", 1, available=10))
    settings = make_settings(redis_url)

    async def available(api: object) -> tuple[int, int]:
        async with api.get("/v1/availability/A?channel=web") as resp:  # type: ignore[attr-defined]
            body = msgspec.json.decode(await resp.read())
            return body["available"], body["held"]

    async def scenario() -> None:
        async with serving(settings) as api:
            async with api.post(
                "/v1/holds",
                json={"hold_id": "cart-1", "channel": "web", "lines": [{"sku": "A", "qty": 4}]},
            ) as resp:
                assert resp.status == 201
            await eventually(lambda: _is(available(api), (6, 4)))
            # Redis restarts (its append-only file keeps the holds); the API keeps serving.
            redis_server.stop()
            try:
                assert await available(api) == (6, 4)
            finally:
                redis_server.start()

            async def hold_again() -> bool:
                async with api.post(
                    "/v1/holds",
                    json={
                        "hold_id": "cart-2",
                        "channel": "web",
                        "lines": [{"sku": "A", "qty": 7}],
                    },
                ) as resp:
                    return resp.status == 409  # 6 left: cart-1 survived the restart

            await eventually(hold_again, timeout=15)
            async with api.get("/v1/holds/cart-1") as resp:
                assert msgspec.json.decode(await resp.read())["status"] == "held"
        # A new API process loads the surviving hold.
        async with serving(settings) as api:
            assert await available(api) == (6, 4)
            async with api.delete("/v1/holds/cart-1") as resp:
                assert resp.status == 200
            await eventually(lambda: _is(available(api), (10, 0)))

    run(scenario())


async def _is(figures: object, expected: tuple[int, int]) -> bool:
    return await figures == expected  # type: ignore[misc]


def test_a_silent_redis_bounds_a_hold_request(redis_url: str) -> None:
    """Redis that stops answering (a partition): the hold is 503 after the call's timeout."""
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        write(client, projection("A", 1, available=10))
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    db = redis_url.rsplit("/", 1)[1]

    async def scenario() -> None:
        async with TcpProxy(port) as proxy:
            settings = make_settings(f"redis://127.0.0.1:{proxy.port}/{db}")
            async with serving(settings) as api:
                body = {"hold_id": "c", "channel": "web", "lines": [{"sku": "A", "qty": 1}]}
                async with api.post("/v1/holds", json=body) as resp:
                    assert resp.status == 201
                proxy.hold()
                started = time.monotonic()
                async with api.post("/v1/holds", json={**body, "hold_id": "d"}) as resp:
                    assert resp.status == 503
                    assert (await resp.json())["error"]["code"] == "not_ready"
                assert time.monotonic() - started < 20  # the call timeout, loaded machine slack
                proxy.release()

    run(scenario())
