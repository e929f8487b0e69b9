"""``/v1/holds`` end to end against a real redis-server: the contract's rules one by one."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio

from stocksync.config.settings import HoldSettings, Settings, TokenSettings
from stocksync.store.generation import effective_namespace
from stocksync.store.layout import CLUSTER_SHARDS, Keys, reload_fields
from tests.api.helpers import (
    NAMESPACE,
    Client,
    eventually,
    make_settings,
    projection,
    run,
    serving,
    write,
)

Store = redis.Redis | redis.RedisCluster


@dataclass(frozen=True)
class Backend:
    """Where the test's holds live: one Redis, or a three-master Redis Cluster (where a
    hold's lines are decided shard group by shard group, see store.sharded_holds)."""

    url: str
    cluster: bool

    def settings(self, **options: Any) -> Settings:
        return make_settings(self.url, redis_cluster=self.cluster, **options)

    def changes(self, store: Store) -> int:
        """Entries in the change stream(s) of the model."""
        keys = Keys(NAMESPACE, shards=CLUSTER_SHARDS if self.cluster else 1)
        return sum(store.xlen(keys.changes(shard)) for shard in range(keys.shards))


@pytest.fixture(params=["redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "redis":
        return Backend(request.getfixturevalue("redis_url"), cluster=False)
    return Backend(request.getfixturevalue("redis_cluster_url"), cluster=True)


#: A test of what only one Redis has (its single change stream, say).
_one_redis = pytest.mark.parametrize("backend", ["redis"], indirect=True)


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    client: Store = (
        redis.RedisCluster.from_url(backend.url) if backend.cluster
        else redis.Redis.from_url(backend.url)
    )
    with contextlib.closing(client):
        # web: A 10, B 3, C 1; store: one more each (see projection()).
        write(client, projection("A", 1, available=10), projection("B", 1, available=3))
        write(client, projection("C", 1, available=1))
        yield client


def _hold(hold_id: str, *lines: tuple[str, int], **extra: Any) -> dict[str, Any]:
    return {
        "hold_id": hold_id,
        "channel": "web",
        "lines": [{"sku": s, "qty": q} for s, q in lines],
        **extra,
    }


async def _post(client: Client, path: str, body: Any) -> tuple[int, Any]:
    async with client.post(path, json=body) as resp:
        return resp.status, msgspec.json.decode(await resp.read())


async def _get(client: Client, path: str) -> tuple[int, Any, str | None]:
    async with client.get(path) as resp:
        return resp.status, msgspec.json.decode(await resp.read()), resp.headers.get("ETag")


async def _delete(client: Client, path: str) -> tuple[int, Any]:
    async with client.delete(path) as resp:
        return resp.status, msgspec.json.decode(await resp.read())


async def _available(client: Client, sku: str, channel: str = "web") -> tuple[int, int]:
    status, body, _ = await _get(client, f"/v1/availability/{sku}?channel={channel}")
    assert status == 200
    return body["available"], body["held"]


async def _becomes(
    client: Client, sku: str, figures: tuple[int, int], *, timeout: float = 3
) -> None:
    async def check() -> bool:
        return await _available(client, sku) == figures

    await eventually(check, timeout=timeout)


def _expires(body: dict[str, Any]) -> float:
    return datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def test_a_hold_is_granted_and_counts_against_its_channel(
    backend: Backend, store: Store
) -> None:
    async def scenario() -> None:
        async with serving(backend.settings()) as client:
            _, before, etag_before = await _get(
                client, "/v1/availability/A?channel=web&detail=nodes"
            )
            started = time.time()
            status, body = await _post(client, "/v1/holds", _hold("cart-1", ("A", 2), ("B", 1)))
            assert status == 201
            assert body == {
                "hold_id": "cart-1",
                "channel": "web",
                "status": "held",
                "expires_at": body["expires_at"],
                "lines": [
                    {"sku": "A", "requested": 2, "held": 2},
                    {"sku": "B", "requested": 1, "held": 1},
                ],
            }
            # The default time to live is 900 s.
            assert abs(_expires(body) - (started + 900)) < 2
            await _becomes(client, "A", (8, 2))
            await _becomes(client, "B", (2, 1))
            # Node figures are unchanged; the other channel is not held on.
            _, detail, etag = await _get(client, "/v1/availability/A?channel=web&detail=nodes")
            assert detail["nodes"] == before["nodes"]
            assert detail["held"] == 2 and detail["available"] == 8
            assert detail["version"] > before["version"]
            assert etag != etag_before
            assert await _available(client, "A", "store") == (11, 0)
            # Batch answers subtract too.
            status, batch = await _post(
                client, "/v1/availability/query", {"skus": ["A", "B"], "channel": "web"}
            )
            assert [(i["available"], i["held"]) for i in batch["items"]] == [(8, 2), (2, 1)]
            status, batch = await _post(
                client,
                "/v1/availability/query",
                {"skus": ["B"], "channel": "web", "detail": True},
            )
            assert (batch["items"][0]["available"], batch["items"][0]["held"]) == (2, 1)
            # The status band follows the figure less the holds (threshold 5).
            await _post(client, "/v1/holds", _hold("cart-2", ("A", 4)))
            await _becomes(client, "A", (4, 6))
            _, body, _ = await _get(client, "/v1/availability/A?channel=web")
            assert body["status"] == "low_stock"

    run(scenario())


def test_all_or_nothing_refuses_a_short_line_and_holds_nothing(
    backend: Backend, store: Store
) -> None:
    async def scenario() -> None:
        async with serving(backend.settings()) as client:
            status, body = await _post(
                client, "/v1/holds", _hold("cart-1", ("A", 2), ("B", 4), ("NEVER-SEEN", 1))
            )
            assert status == 409
            assert body["error"]["code"] == "insufficient_stock"
            assert body["error"]["lines"] == [
                {"sku": "B", "requested": 4, "available": 3},
                {"sku": "NEVER-SEEN", "requested": 1, "available": 0},
            ]
            await asyncio.sleep(0.2)
            assert await _available(client, "A") == (10, 0)
            assert await _available(client, "B") == (3, 0)
            # Nothing was kept under that id: it may be used again.
            status, _, _ = await _get(client, "/v1/holds/cart-1")
            assert status == 404
            status, body = await _post(client, "/v1/holds", _hold("cart-1", ("A", 2), ("B", 3)))
            assert (status, body["status"]) == (201, "held")

    run(scenario())


def test_all_or_nothing_across_shards_undoes_what_a_shard_granted(
    backend: Backend, store: Store
) -> None:
    """B (shard 1) can be held, A (shard 11) cannot. On a cluster B's shard grants first
    (shard order) and is undone when A's refuses; on one Redis both are decided at once.
    Either way nothing is held after the answer and the next hold gets all of B."""
    keys = Keys(NAMESPACE, shards=CLUSTER_SHARDS if backend.cluster else 1)
    assert keys.shard_of("B") < keys.shard_of("A") or not backend.cluster

    async def scenario() -> None:
        async with serving(backend.settings()) as client:
            status, body = await _post(client, "/v1/holds", _hold("cart-1", ("A", 11), ("B", 2)))
            assert status == 409
            assert body["error"]["lines"] == [{"sku": "A", "requested": 11, "available": 10}]
            assert store.hget(keys.held("B"), "h:cart-1") is None
            # The grant and its undo are two changes of B's lines on a cluster, none on one
            # Redis: a reader there may have seen B held for a moment, never oversold.
            assert store.hget(keys.held("B"), "v") == (b"2" if backend.cluster else None)
            await _becomes(client, "B", (3, 0))
            assert await _available(client, "A") == (10, 0)
            status, _, _ = await _get(client, "/v1/holds/cart-1")
            assert status == 404
            status, body = await _post(client, "/v1/holds", _hold("cart-2", ("B", 3), ("A", 10)))
            assert (status, body["status"]) == (201, "held")
            await _becomes(client, "B", (0, 3))

    run(scenario())


def test_partial_holds_what_is_available(backend: Backend, store: Store) -> None:
    async def scenario() -> None:
        async with serving(backend.settings()) as client:
            status, body = await _post(
                client,
                "/v1/holds",
                _hold("cart-1", ("A", 2), ("B", 5), ("NEVER-SEEN", 1), partial=True),
            )
            assert status == 201
            assert body["status"] == "partial"
            assert body["lines"] == [
                {"sku": "A", "requested": 2, "held": 2},
                {"sku": "B", "requested": 5, "held": 3},
                {"sku": "NEVER-SEEN", "requested": 1, "held": 0},
            ]
            await _becomes(client, "B", (0, 3))
            status, body = await _post(
                client, "/v1/holds", _hold("cart-2", ("A", 8), partial=True)
            )
            assert (status, body["status"], body["lines"][0]["held"]) == (201, "held", 8)
            status, body = await _post(
                client, "/v1/holds", _hold("cart-3", ("A", 1), partial=True)
            )
            assert (status, body["status"], body["lines"][0]["held"]) == (201, "partial", 0)

    run(scenario())


def test_the_same_hold_id_is_idempotent_and_conflicts_otherwise(
    backend: Backend, store: Store
) -> None:
    async def scenario() -> None:
        async with serving(backend.settings()) as client:
            first = _hold("cart-1", ("A", 2), ("B", 1))
            status, created = await _post(client, "/v1/holds", first)
            assert status == 201
            # Same channel and lines, in another order and with another ttl: the same hold.
            again = _hold("cart-1", ("B", 1), ("A", 2), ttl_seconds=60)
            status, body = await _post(client, "/v1/holds", again)
            assert (status, body) == (200, created)
            await _becomes(client, "A", (8, 2))  # held once, not twice
            await asyncio.sleep(0.2)
            assert await _available(client, "A") == (8, 2)
            for other in (
                _hold("cart-1", ("A", 3), ("B", 1)),
                _hold("cart-1", ("A", 2)),
                {**first, "channel": "store"},
            ):
                status, body = await _post(client, "/v1/holds", other)
                assert (status, body["error"]["code"]) == (409, "hold_conflict")
            # An ended hold is remembered: same body 200 (as it is), other body 409.
            await _delete(client, "/v1/holds/cart-1")
            status, body = await _post(client, "/v1/holds", first)
            assert (status, body["status"]) == (200, "released")
            status, body = await _post(client, "/v1/holds", _hold("cart-1", ("C", 1)))
            assert (status, body["error"]["code"]) == (409, "hold_conflict")
            ttl = store.pttl("apitest:hold:{cart-1}")
            assert 86_300_000 < ttl <= 86_400_000

    run(scenario())


@_one_redis
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"hold_id": "h", "lines": [{"sku": "A", "qty": 1}]}, 400, "bad_request"),  # 2 channels
        (_hold("h", ("A", 1), channel="nowhere"), 404, "unknown_channel"),
        (_hold("h", ("A", 1), ttl_seconds=86_401), 400, "bad_request"),
        (_hold("h", ("A", 1), ttl_seconds=0), 400, "bad_request"),
        (_hold("h", ("A", 0)), 400, "bad_request"),
        (_hold("h", ("A", 1), ("A", 2)), 400, "bad_request"),
        (_hold("h"), 400, "bad_request"),
        (_hold("h", *((f"S{i}", 1) for i in range(4))), 400, "bad_request"),  # max_lines 3
        (_hold("bad id", ("A", 1)), 400, "bad_request"),
        ({**_hold("h", ("A", 1)), "extra": 1}, 400, "bad_request"),
        ("not an object", 400, "bad_request"),
        # Numbers and booleans are JSON's own: no string or 1 stands for one.
        (_hold("h", ("A", "1")), 400, "bad_request"),  # type: ignore[arg-type]
        (_hold("h", ("A", 1.5)), 400, "bad_request"),  # type: ignore[arg-type]
        (_hold("h", ("A", True)), 400, "bad_request"),
        (_hold("h", ("A", 1), ttl_seconds="60"), 400, "bad_request"),
        (_hold("h", ("A", 1), partial=1), 400, "bad_request"),
        (_hold("h", ("A", 1), partial="true"), 400, "bad_request"),
    ],
)
def test_bad_hold_requests(
    backend: Backend, store: Store, body: Any, status: int, code: str
) -> None:
    settings = backend.settings(holds=HoldSettings(max_lines=3))

    async def scenario() -> None:
        async with serving(settings) as client:
            got, answer = await _post(client, "/v1/holds", body)
            assert (got, answer["error"]["code"]) == (status, code)

    run(scenario())


@_one_redis
def test_whole_numbers_written_as_decimals_are_integers(backend: Backend, store: Store) -> None:
    # As JSON Schema has it, 2.0 is an integer; 2.5 (above) is not.
    async def scenario() -> None:
        async with serving(backend.settings()) as client:
            body = _hold("h", ("A", 2.0), ttl_seconds=60.0)  # type: ignore[arg-type]
            status, answer = await _post(client, "/v1/holds", body)
            assert (status, answer["lines"]) == (201, [{"sku": "A", "requested": 2, "held": 2}])
            status, answer = await _post(client, "/v1/holds/h/extend", {"ttl_seconds": 30.0})
            assert status == 200
            status, answer = await _post(client, "/v1/holds/h/extend", {"ttl_seconds": "30"})
            assert (status, answer["error"]["code"]) == (400, "bad_request")
            # A value the typed decoder refuses before it meets the invalid bytes after
            # it, and arrays nested deeper than the untyped decoder recurses.
            bodies = (b"7\xff", b"[" * 5000 + b"]" * 5000)
            for path, data in itertools.product(("/v1/holds", "/v1/holds/h/extend"), bodies):
                async with client.post(
                    path, data=data, headers={"Content-Type": "application/json"}
                ) as response:
                    answer = await response.json()
                    assert (response.status, answer["error"]["code"]) == (400, "bad_request")

    run(scenario())


@_one_redis
def test_one_channel_may_be_omitted(backend: Backend, store: Store) -> None:
    async def scenario() -> None:
        async with serving(backend.settings(channels=("web",))) as client:
            status, body = await _post(
                client, "/v1/holds", {"hold_id": "h", "lines": [{"sku": "A", "qty": 1}]}
            )
            assert (status, body["channel"]) == (201, "web")

    run(scenario())


def test_get_extend_and_release(backend: Backend, store: Store) -> None:
    async def scenario() -> None:
        async with serving(backend.settings()) as client:
            status, created = await _post(client, "/v1/holds", _hold("cart-1", ("A", 2)))
            status, body, _ = await _get(client, "/v1/holds/cart-1")
            assert (status, body) == (200, created)
            for path in ("/v1/holds/nope", "/v1/holds/bad%20id"):
                status, body, _ = await _get(client, path)
                assert (status, body["error"]["code"]) == (404, "unknown_hold")

            started = time.time()
            status, body = await _post(client, "/v1/holds/cart-1/extend", {"ttl_seconds": 3600})
            assert status == 200
            assert abs(_expires(body) - (started + 3600)) < 2
            status, body = await _post(client, "/v1/holds/cart-1/extend", {"ttl_seconds": 0})
            assert status == 400
            status, body = await _post(client, "/v1/holds/nope/extend", {"ttl_seconds": 5})
            assert (status, body["error"]["code"]) == (404, "unknown_hold")

            status, body = await _delete(client, "/v1/holds/cart-1")
            assert (status, body["status"]) == (200, "released")
            await _becomes(client, "A", (10, 0))
            status, body = await _delete(client, "/v1/holds/cart-1")
            assert (status, body["status"]) == (200, "released")
            status, body = await _post(client, "/v1/holds/cart-1/extend", {"ttl_seconds": 5})
            assert (status, body["error"]["code"]) == (409, "hold_ended")
            status, body = await _delete(client, "/v1/holds/nope")
            assert (status, body["error"]["code"]) == (404, "unknown_hold")

    run(scenario())


def test_a_hold_stops_counting_at_its_expiry_without_any_event(
    backend: Backend, store: Store
) -> None:
    async def scenario() -> None:
        async with serving(backend.settings()) as client:
            status, body = await _post(
                client, "/v1/holds", _hold("cart-1", ("A", 2), ttl_seconds=1)
            )
            assert status == 201
            expires = _expires(body)
            await _becomes(client, "A", (8, 2))
            _, _, etag_held = await _get(client, "/v1/availability/A?channel=web")
            entries = backend.changes(store)
            while await _available(client, "A") != (10, 0):
                assert time.time() < expires + 1.0, "still held 1 s after expires_at"
                await asyncio.sleep(0.01)
            assert time.time() >= expires - 0.05
            assert backend.changes(store) == entries  # nothing was written
            _, _, etag = await _get(client, "/v1/availability/A?channel=web")
            assert etag != etag_held
            status, body, _ = await _get(client, "/v1/holds/cart-1")
            assert body["status"] == "expired"
            status, body = await _delete(client, "/v1/holds/cart-1")
            assert (status, body["status"]) == (200, "expired")
            status, body = await _post(client, "/v1/holds/cart-1/extend", {"ttl_seconds": 5})
            assert (status, body["error"]["code"]) == (409, "hold_ended")
            # The units are available to the next hold.
            status, body = await _post(client, "/v1/holds", _hold("cart-2", ("A", 10)))
            assert status == 201

    run(scenario())


def test_every_replica_and_a_restarted_one_serve_the_holds(
    backend: Backend, store: Store
) -> None:
    settings = backend.settings()

    async def scenario() -> None:
        async with serving(settings) as first, serving(settings) as second:
            _, held = await _post(first, "/v1/holds", _hold("cart-1", ("A", 3), ttl_seconds=4))
            await _post(second, "/v1/holds", _hold("cart-2", ("A", 1)))
            await _becomes(first, "A", (6, 4))
            await _becomes(second, "A", (6, 4))
            _, _, etag_1 = await _get(first, "/v1/availability/A?channel=web")
            _, _, etag_2 = await _get(second, "/v1/availability/A?channel=web")
            assert etag_1 == etag_2
        # A replica started later loads the holds from Redis, expiry times included.
        async with serving(settings) as third:
            asked = time.time()
            figures = await _available(third, "A")
            answered = time.time()
            # Both count until cart-1's expiry (4 s may be gone on a loaded machine), only
            # cart-2 from 1 s after it; in between the answer may be either.
            if answered < _expires(held):
                assert figures == (6, 4)
            elif asked > _expires(held) + 1:
                assert figures == (9, 1)
            else:
                assert figures in ((6, 4), (9, 1))
            await _becomes(third, "A", (9, 1), timeout=6)
            await _delete(third, "/v1/holds/cart-2")
            await _becomes(third, "A", (10, 0))

    run(scenario())


@_one_redis
def test_holds_need_the_holds_write_scope(backend: Backend, store: Store) -> None:
    tokens = [
        TokenSettings(name="reader", sha256=hashlib.sha256(b"r").hexdigest()),
        TokenSettings(
            name="checkout",
            sha256=hashlib.sha256(b"w").hexdigest(),
            scopes=["holds:write"],
        ),
        TokenSettings(name="ops", sha256=hashlib.sha256(b"a").hexdigest(), scopes=["admin"]),
    ]

    async def scenario() -> None:
        async with serving(backend.settings(tokens=tokens)) as client:
            body = _hold("cart-1", ("A", 1))
            async with client.post("/v1/holds", json=body) as resp:
                assert resp.status == 401
            async with client.post(
                "/v1/holds", json=body, headers={"Authorization": "Bearer r"}
            ) as resp:
                assert resp.status == 403
            async with client.post(
                "/v1/holds", json=body, headers={"Authorization": "Bearer w"}
            ) as resp:
                assert resp.status == 201
            async with client.get(
                "/v1/holds/cart-1", headers={"Authorization": "Bearer a"}
            ) as resp:
                assert resp.status == 200
            async with client.delete(
                "/v1/holds/cart-1", headers={"Authorization": "Bearer r"}
            ) as resp:
                assert resp.status == 403

    run(scenario())


@_one_redis
def test_metrics_and_openapi(backend: Backend, store: Store) -> None:
    async def scenario() -> None:
        async with serving(backend.settings()) as client:
            await _post(client, "/v1/holds", _hold("cart-1", ("A", 2)))
            await _post(client, "/v1/holds", _hold("cart-2", ("C", 5)))
            await _post(client, "/v1/holds", _hold("cart-3", ("C", 5), partial=True))
            await _post(client, "/v1/holds", _hold("cart-1", ("C", 5)))
            await _delete(client, "/v1/holds/cart-3")

            async def active_is_one() -> bool:
                async with client.get("/metrics") as resp:
                    return "stocksync_holds_active 1.0" in await resp.text()

            await eventually(active_is_one, timeout=3)
            async with client.get("/metrics") as resp:
                text = await resp.text()
            for outcome, count in (
                ("held", 1),
                ("partial", 1),
                ("insufficient", 1),
                ("conflict", 1),
                ("released", 1),
            ):
                assert f'stocksync_holds_total{{outcome="{outcome}"}} {count}.0' in text
            assert "stocksync_hold_request_seconds_count 5.0" in text
            async with client.get("/v1/openapi.json") as resp:
                document = await resp.json()
            assert set(document["paths"]["/v1/holds/{hold_id}"]) == {"get", "delete"}
            assert "post" in document["paths"]["/v1/holds"]
            assert "post" in document["paths"]["/v1/holds/{hold_id}/extend"]
            schemas = document["components"]["schemas"]
            assert {"HoldRequest", "Hold", "ExtendRequest", "InsufficientBody"} <= set(schemas)
            assert "held" in schemas["ChannelAvailability"]["properties"]

    run(scenario())


@_one_redis
def test_a_rebuild_keeps_the_holds(backend: Backend, store: Store) -> None:
    """Holds live beside the generations: after a switch they still count, and new holds
    are granted against the new generation's figures."""

    async def scenario() -> None:
        async with serving(backend.settings()) as client:
            status, _ = await _post(client, "/v1/holds", _hold("cart-1", ("A", 2)))
            assert status == 201
            await _becomes(client, "A", (8, 2))
            # What `stocksync rebuild` does: a full model in a new key space, the pointer
            # switched, a reload entry on the old stream. A now has 20 on web.
            generation = "g20261201T090003123Z"
            new_ns = effective_namespace(NAMESPACE, generation)
            write(store, projection("A", 1, available=20), namespace=new_ns,
                  generation=generation)
            store.set(Keys(NAMESPACE).generation(), generation)
            store.xadd(Keys(NAMESPACE).changes(), reload_fields(new_ns, generation))  # type: ignore[arg-type]
            await _becomes(client, "A", (18, 2))
            status, body = await _post(client, "/v1/holds", _hold("cart-2", ("A", 19)))
            assert (status, body["error"]["lines"][0]["available"]) == (409, 18)
            status, _ = await _post(client, "/v1/holds", _hold("cart-2", ("A", 18)))
            assert status == 201
            await _becomes(client, "A", (0, 20))
            await _delete(client, "/v1/holds/cart-1")
            await _becomes(client, "A", (2, 18))

    run(scenario())


def test_an_extended_hold_keeps_counting_past_its_first_expiry(
    backend: Backend, store: Store
) -> None:
    async def scenario() -> None:
        async with serving(backend.settings()) as client:
            status, body = await _post(
                client, "/v1/holds", _hold("cart-1", ("A", 3), ttl_seconds=1)
            )
            first = _expires(body)
            await _becomes(client, "A", (7, 3))
            status, body = await _post(client, "/v1/holds/cart-1/extend", {"ttl_seconds": 3})
            assert status == 200 and _expires(body) > first + 1
            await asyncio.sleep(max(0.0, first - time.time()) + 0.3)
            assert await _available(client, "A") == (7, 3)  # past the first expiry: held
            status, body, _ = await _get(client, "/v1/holds/cart-1")
            assert body["status"] == "held"
            await eventually(lambda: _is_free(client), timeout=4)
            assert time.time() >= _expires(body) - 0.05

    run(scenario())


async def _is_free(client: Client) -> bool:
    return await _available(client, "A") == (10, 0)


def test_holds_over_what_the_channel_has_are_counted(backend: Backend, store: Store) -> None:
    async def scenario() -> None:
        async with serving(backend.settings()) as client:
            await _post(client, "/v1/holds", _hold("cart-1", ("A", 8)))
            await _becomes(client, "A", (2, 8))

            async def oversold() -> float:
                async with client.get("/metrics") as resp:
                    for line in (await resp.text()).splitlines():
                        if line.startswith("stocksync_holds_oversold "):
                            return float(line.split()[1])
                raise AssertionError("no stocksync_holds_oversold")

            assert await oversold() == 0
            write(store, projection("A", 2, available=5))  # a count found only 5 on web
            await _becomes(client, "A", (0, 8))
            assert await oversold() == 1

    run(scenario())


def test_with_wait_replicas_a_hold_write_waits_for_the_replica_or_answers_503(
    tmp_path: Path,
) -> None:
    """One Redis with a replica and ``redis_wait_replicas = 1``: create, extend,
    release and conversion count once the replica has them; with the replica stopped
    (attached but silent) each answers ``503 not_ready`` after the WAIT's timeout,
    never a silent success, and a retry once it is back succeeds exactly."""
    from stocksync.store import StoreUnavailable
    from stocksync.store.holds import HoldStore
    from tests.store.test_acked import master_and_replica

    with master_and_replica(tmp_path) as (master, replica):
        assert replica.pid is not None
        with redis.Redis.from_url(master.url) as client:
            write(client, projection("A", 1, available=10), projection("B", 1, available=3))
        settings = msgspec.structs.replace(
            # Long enough for a loaded machine's replica to acknowledge.
            make_settings(master.url), redis_wait_replicas=1, redis_wait_timeout_ms=3000
        )
        keys = Keys(NAMESPACE)
        on_replica = redis.Redis.from_url(replica.url)

        async def scenario() -> None:
            async with serving(settings) as client:
                status, body = await _post(client, "/v1/holds", _hold("cart-1", ("A", 2)))
                assert (status, body.get("status")) == (201, "held"), body
                # Acknowledged means on the replica already, not a moment later.
                assert on_replica.hget(keys.hold("cart-1"), "st") == b"held"
                status, _ = await _post(client, "/v1/holds/cart-1/extend", {"ttl_seconds": 600})
                assert status == 200
                status, body = await _post(client, "/v1/holds", _hold("cart-3", ("B", 1)))
                assert status == 201

                os.kill(replica.pid, signal.SIGSTOP)
                try:
                    for method, path, body in (
                        ("POST", "/v1/holds", _hold("cart-2", ("A", 1))),
                        ("POST", "/v1/holds/cart-1/extend", {"ttl_seconds": 900}),
                        ("DELETE", "/v1/holds/cart-1", None),
                    ):
                        async with client.request(method, path, json=body) as resp:
                            answer = msgspec.json.decode(await resp.read())
                            code = answer.get("error", {}).get("code")
                            assert (resp.status, code) == (503, "not_ready"), (path, answer)
                    # The order translator's conversion: unavailable, so the worker retries.
                    holds = HoldStore(
                        redis.asyncio.Redis.from_url(master.url), lambda: keys,
                        wait_replicas=1, wait_timeout_ms=3000,
                    )
                    try:
                        with pytest.raises(StoreUnavailable, match="0 of 1 replica"):
                            await holds.convert("cart-3", "o-1", ["B"])
                    finally:
                        await holds.close()
                        await holds.client.aclose()
                finally:
                    os.kill(replica.pid, signal.SIGCONT)

                async def retried(method: str, path: str, body: Any = None) -> tuple[int, Any]:
                    for _ in range(100):  # the resumed replica may take a moment
                        async with client.request(method, path, json=body) as resp:
                            if resp.status != 503:
                                return resp.status, msgspec.json.decode(await resp.read())
                        await asyncio.sleep(0.05)
                    raise AssertionError(f"{method} {path} still unavailable")

                # The unacknowledged create happened on the master: its retry is the same
                # hold (200), not a second one.
                status, body = await retried("POST", "/v1/holds", _hold("cart-2", ("A", 1)))
                assert (status, body["status"]) in ((200, "held"), (201, "held"))
                status, body = await retried("DELETE", "/v1/holds/cart-1")
                assert (status, body["status"]) == (200, "released")
                await _becomes(client, "A", (9, 1))
                assert on_replica.hget(keys.hold("cart-1"), "st") == b"released"

        try:
            run(scenario())
        finally:
            on_replica.close()
