"""Checkout holds through the whole pipeline: an order converts its hold without a gap."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from stocksync.config.settings import ApiSettings, ChannelSettings, NodeSettings, Settings
from stocksync.daemon.services import free_port
from tests.api.helpers import ApiProcess
from tests.e2e.events import NODE_SAFETY, single
from tests.e2e.harness import Cluster, redis_options

__all__: list[str] = []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _api_settings(cluster: Cluster) -> Settings:
    return Settings(
        redis_url=cluster.redis_url,
        redis_cluster=cluster.redis_cluster,
        topic_prefix=cluster.prefix,
        redis_namespace=cluster.prefix,
        channels=[
            ChannelSettings(
                name=c.name,
                nodes=list(c.nodes),
                buffer=c.buffer,
                low_stock_threshold=c.low_stock_threshold,
            )
            for c in cluster.channels
        ],
        nodes={node: NodeSettings(safety_stock=s) for node, s in NODE_SAFETY.items()},
        api=ApiSettings(port=free_port()),
    )


def _call(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _figures(api: ApiProcess, sku: str) -> tuple[int, int] | None:
    status, body = _call(f"{api.url}/v1/availability/{sku}?channel=web")
    return (body["available"], body["held"]) if status == 200 else None


def _wait(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.mark.parametrize("redis_kind", ["redis", "redis-cluster"])
def test_an_order_converts_its_hold_and_readers_see_one_figure_throughout(
    make_cluster: Callable[..., Cluster], request: pytest.FixtureRequest, redis_kind: str
) -> None:
    """On a Redis Cluster X and Y are in different shards: the conversion marks the hold
    in its own slot, releases Y in Y's shard, and the applier's batch script still ends
    X's line in the step that writes the order's reservation."""
    cluster = make_cluster(partitions=2, **redis_options(request, redis_kind))
    wire = cluster.wire
    cluster.start_worker()
    with ApiProcess(_api_settings(cluster)) as api:
        # web = dc-east + dc-west (safety 2, nothing there) less a buffer of 1.
        cluster.send([
            single(wire.snapshot("X", "dc-east", 20, 1)),
            single(wire.snapshot("Y", "dc-east", 5, 1)),
        ])
        _wait(lambda: _figures(api, "X") == (19, 0) and _figures(api, "Y") == (4, 0))
        status, hold = _call(
            f"{api.url}/v1/holds",
            "POST",
            {"hold_id": "cart-9", "channel": "web",
             "lines": [{"sku": "X", "qty": 3}, {"sku": "Y", "qty": 2}]},
        )
        assert (status, hold["status"]) == (201, "held")
        _wait(lambda: _figures(api, "X") == (16, 3) and _figures(api, "Y") == (2, 2))

        seen: list[tuple[int, int]] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                found = _figures(api, "X")
                if found is not None:
                    seen.append(found)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            time.sleep(0.2)
            order = wire.created("o-1", [("1", "X", 3, None)])
            order["hold_id"] = "cart-9"
            cluster.send([single(order)])
            _wait(lambda: bool(seen) and seen[-1] == (16, 0))
            time.sleep(0.2)
        finally:
            stop.set()
            poller.join()
        # The hold's 3 stopped counting in the step the order's 3 started to: one figure.
        assert {available for available, _ in seen} == {16}, sorted(set(seen))
        assert seen[0] == (16, 3) and seen[-1] == (16, 0)
        # The hold's SKU the order does not have is released; the hold says converted.
        _wait(lambda: _figures(api, "Y") == (4, 0))
        status, body = _call(f"{api.url}/v1/holds/cart-9")
        assert (status, body["status"]) == (200, "converted")

        # An unknown hold_id reserves as any order does; so does an expired hold's.
        order = wire.created("o-2", [("1", "X", 1, None)])
        order["hold_id"] = "no-such-cart"
        cluster.send([single(order)])
        _wait(lambda: _figures(api, "X") == (15, 0))
        status, body = _call(
            f"{api.url}/v1/holds",
            "POST",
            {"hold_id": "cart-e", "channel": "web", "ttl_seconds": 1,
             "lines": [{"sku": "X", "qty": 2}]},
        )
        assert status == 201
        _wait(lambda: _figures(api, "X") == (13, 2))
        _wait(lambda: _figures(api, "X") == (15, 0), timeout=3)
        order = wire.created("o-3", [("1", "X", 2, None)])
        order["hold_id"] = "cart-e"
        cluster.send([single(order)])
        _wait(lambda: _figures(api, "X") == (13, 0))
        status, body = _call(f"{api.url}/v1/holds/cart-e")
        assert body["status"] == "expired"


def test_a_hold_survives_a_worker_restart_and_is_converted_after_it(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(partitions=2)
    wire = cluster.wire
    worker = cluster.start_worker()
    with ApiProcess(_api_settings(cluster)) as api:
        cluster.send([single(wire.snapshot("X", "dc-east", 20, 1))])
        _wait(lambda: _figures(api, "X") == (19, 0))
        status, _ = _call(
            f"{api.url}/v1/holds",
            "POST",
            {"hold_id": "cart-1", "channel": "web", "lines": [{"sku": "X", "qty": 4}]},
        )
        assert status == 201
        _wait(lambda: _figures(api, "X") == (15, 4))
        worker.terminate(15)
        worker = cluster.worker("w2").start().wait_ready()
        order = wire.created("o-1", [("1", "X", 4, None)])
        order["hold_id"] = "cart-1"
        cluster.send([single(order), single(wire.snapshot("X", "dc-east", 21, 2))])
        _wait(lambda: _figures(api, "X") == (16, 0))
