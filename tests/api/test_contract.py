"""The API contract (contracts/api-v1.md), endpoint by endpoint: status, body, headers."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import msgspec
import pytest
import redis
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from stocksync.api.etags import etag
from stocksync.api.handlers import AvailabilityHandlers
from stocksync.codecs.projections import ChannelAvailability
from stocksync.daemon.services import free_port
from tests.api.helpers import GENERATION, Client, make_settings, projection, run, serving, write

_enc = msgspec.json.Encoder()


def _plain(channel: ChannelAvailability) -> bytes:
    """The document without node detail, as msgspec encodes it (no holds: ``held`` 0)."""
    return _enc.encode(msgspec.structs.replace(channel, held=0, nodes=msgspec.UNSET))


def _error(body: bytes, code: str) -> str:
    decoded = msgspec.json.decode(body)
    assert set(decoded) == {"error"}
    assert set(decoded["error"]) == {"code", "message"}
    assert decoded["error"]["code"] == code
    message = decoded["error"]["message"]
    assert isinstance(message, str) and message
    assert "Traceback" not in message
    return message


async def _get(client: Client, path: str, **kwargs: Any) -> tuple[int, CIMultiDict[str], bytes]:
    # Sent byte for byte: no normalisation of "..", no re-quoting.
    url = URL(str(client.make_url("/")).rstrip("/") + path, encoded=True)
    async with client.session.get(url, **kwargs) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def _post(client: Client, body: Any, **kwargs: Any) -> tuple[int, CIMultiDict[str], bytes]:
    if isinstance(body, bytes) or hasattr(body, "__aiter__"):
        kwargs["data"] = body
    else:
        kwargs["json"] = body
    async with client.post("/v1/availability/query", **kwargs) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


@pytest.fixture
def store(redis_url: str) -> Any:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        yield client


def test_get_one_sku(redis_url: str, store: redis.Redis) -> None:
    proj = projection("TSHIRT-RED-M", 42, available=118)
    write(store, proj)

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            status, headers, body = await _get(client, "/v1/availability/TSHIRT-RED-M?channel=web")
            assert status == 200
            assert body == _plain(proj.channels[0])
            assert msgspec.json.decode(body) == {
                "sku": "TSHIRT-RED-M",
                "channel": "web",
                "available": 118,
                "status": "in_stock",
                "version": 42,
                "updated_at": "2026-11-27T09:01:10.512Z",
                "held": 0,
            }
            assert headers["Content-Type"] == "application/json"
            assert headers["ETag"] == etag(GENERATION, 42, "web", False)
            assert headers["X-Correlation-ID"]

            status, _, body = await _get(client, "/v1/availability/TSHIRT-RED-M?channel=store")
            assert status == 200
            assert body == _plain(proj.channels[1])

    run(scenario())


def test_detail_nodes_adds_the_nodes(redis_url: str, store: redis.Redis) -> None:
    proj = projection("SKU-1", 7)
    write(store, proj)

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            status, headers, body = await _get(
                client, "/v1/availability/SKU-1?channel=store&detail=nodes"
            )
            assert status == 200
            assert body == _enc.encode(proj.channels[1])
            assert msgspec.json.decode(body)["nodes"][0] == {
                "node": "dc-east",
                "available": 11,
                "on_hand": 13,
                "reserved": 2,
                "quarantine": 0,
                "safety_stock": 0,
            }
            assert headers["ETag"] == etag(GENERATION, 7, "store", True)
            status, _, body = await _get(client, "/v1/availability/SKU-1?channel=web&detail=all")
            assert status == 400
            _error(body, "bad_request")

    run(scenario())


def test_etag_and_if_none_match(redis_url: str, store: redis.Redis) -> None:
    write(store, projection("SKU-1", 5))

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            path = "/v1/availability/SKU-1?channel=web"
            tag = etag(GENERATION, 5, "web", False)
            for matching in (tag, f"W/{tag}", f'"4", {tag}', "*"):
                status, headers, body = await _get(
                    client, path, headers={"If-None-Match": matching}
                )
                assert (status, body) == (304, b""), matching
                assert headers["ETag"] == tag
                assert headers["X-Correlation-ID"]
            status, _, body = await _get(client, path, headers={"If-None-Match": '"5"'})
            assert status == 200 and body

    run(scenario())


def test_unknown_and_invalid_skus(redis_url: str, store: redis.Redis) -> None:
    write(store, projection("SKU-1"))

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            status, _, body = await _get(client, "/v1/availability/NOPE?channel=web")
            assert status == 404
            _error(body, "unknown_sku")
            for bad in ("%00", "a" * 65, "%C3%A9t%C3%A9", "", "a%20b", "a%3Fb"):
                status, _, body = await _get(client, f"/v1/availability/{bad}?channel=web")
                assert status == 400, bad
                _error(body, "invalid_sku")
            # A valid identifier may hold dots and slashes.
            for odd in ("..", "a/b", "A:B.C-1"):
                status, _, body = await _get(client, f"/v1/availability/{odd}?channel=web")
                assert status == 404, odd
                _error(body, "unknown_sku")

    run(scenario())


def test_channel_rules(redis_url: str, store: redis.Redis) -> None:
    write(store, projection("SKU-1"))

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            status, _, body = await _get(client, "/v1/availability/SKU-1")
            assert status == 400
            assert "'web'" in _error(body, "bad_request")
            status, _, body = await _get(client, "/v1/availability/SKU-1?channel=pos")
            assert status == 404
            _error(body, "unknown_channel")
            # An unknown channel is named before an unknown SKU is.
            status, _, body = await _get(client, "/v1/availability/OTHER?channel=pos")
            assert status == 404
            _error(body, "unknown_channel")

    run(scenario())


def test_channel_may_be_omitted_when_only_one(redis_url: str, store: redis.Redis) -> None:
    proj = projection("SKU-1", channels=["web"])
    write(store, proj)

    async def scenario() -> None:
        async with serving(make_settings(redis_url, channels=["web"])) as client:
            status, _, body = await _get(client, "/v1/availability/SKU-1")
            assert status == 200
            assert body == _plain(proj.channels[0])
            status, _, body = await _post(client, {"skus": ["SKU-1"]})
            assert status == 200
            assert msgspec.json.decode(body)["items"][0]["channel"] == "web"

    run(scenario())


def test_sku_missing_on_a_channel_is_unknown_there(redis_url: str, store: redis.Redis) -> None:
    write(store, projection("SKU-1", channels=["web"]))

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            status, _, body = await _get(client, "/v1/availability/SKU-1?channel=store")
            assert status == 404
            _error(body, "unknown_sku")
            status, _, body = await _post(client, {"skus": ["SKU-1"], "channel": "store"})
            assert msgspec.json.decode(body) == {"items": [], "unknown": ["SKU-1"]}
            status, _, body = await _post(client, {"skus": ["SKU-1", "SKU-1"], "channel": "store"})
            assert msgspec.json.decode(body) == {"items": [], "unknown": ["SKU-1", "SKU-1"]}

    run(scenario())


def test_batch_query(redis_url: str, store: redis.Redis) -> None:
    a, b, c = projection("A", 1), projection("B", 2, available=0), projection("C", 3)
    write(store, a, b, c)

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            status, headers, body = await _post(
                client, {"skus": ["C", "X", "A", "B", "Y", "A"], "channel": "web", "detail": False}
            )
            assert status == 200
            assert headers["Content-Type"] == "application/json"
            assert headers["X-Correlation-ID"]
            decoded = msgspec.json.decode(body)
            assert [i["sku"] for i in decoded["items"]] == ["C", "A", "B", "A"]
            assert decoded["unknown"] == ["X", "Y"]
            assert decoded["items"][2]["status"] == "out_of_stock"
            assert body == (
                b'{"items":['
                + b",".join(_plain(p.channels[0]) for p in (c, a, b, a))
                + b'],"unknown":["X","Y"]}'
            )

            # All known: the same bytes through the join-only path (two SKUs or more).
            status, _, body = await _post(client, {"skus": ["C", "A", "C"], "channel": "web"})
            assert status == 200
            assert body == (
                b'{"items":['
                + b",".join(_plain(p.channels[0]) for p in (c, a, c))
                + b'],"unknown":[]}'
            )
            status, _, body = await _post(client, {"skus": ["B"], "channel": "web"})
            assert body == b'{"items":[' + _plain(b.channels[0]) + b'],"unknown":[]}'

            status, _, body = await _post(
                client, {"skus": ["A"], "channel": "store", "detail": True}
            )
            assert status == 200
            assert msgspec.json.decode(body)["items"] == [msgspec.to_builtins(a.channels[1])]

            status, _, body = await _post(client, {"skus": [], "channel": "web"})
            assert (status, msgspec.json.decode(body)) == (200, {"items": [], "unknown": []})

    run(scenario())


def test_batch_errors(redis_url: str, store: redis.Redis) -> None:
    write(store, projection("A"))

    async def scenario() -> None:
        settings = make_settings(redis_url, max_skus=10, max_body_bytes=4096)
        async with serving(settings) as client:
            cases: list[tuple[Any, int, str]] = [
                (b"{not json", 400, "bad_request"),
                (b"", 400, "bad_request"),
                (b"[]", 400, "bad_request"),
                ({"skus": "A", "channel": "web"}, 400, "bad_request"),
                ({"skus": [1, 2], "channel": "web"}, 400, "bad_request"),
                ({"skus": ["A"], "channel": 5}, 400, "bad_request"),
                ({"skus": ["A"], "channel": "web", "detail": "yes"}, 400, "bad_request"),
                ({"skus": ["A"], "channel": "web", "extra": 1}, 400, "bad_request"),
                ({"channel": "web"}, 400, "bad_request"),
                ({"skus": ["A"]}, 400, "bad_request"),
                ({"skus": ["A"], "channel": "pos"}, 404, "unknown_channel"),
                ({"skus": ["A", "b\u00e9"], "channel": "web"}, 400, "invalid_sku"),
                ({"skus": ["A", ""], "channel": "web"}, 400, "invalid_sku"),
                ({"skus": ["A"] * 11, "channel": "web"}, 413, "too_many_skus"),
                (b'{"skus":["' + b"A" * 5000 + b'"]}', 413, "too_many_skus"),
            ]
            for body, status, code in cases:
                got, _, answer = await _post(client, body)
                assert got == status, body
                _error(answer, code)

            # A body over the limit sent without Content-Length (chunked).
            async def chunks() -> Any:
                for _ in range(10):
                    yield b" " * 1000

            got, _, answer = await _post(client, chunks())
            assert got == 413
            _error(answer, "too_many_skus")

    run(scenario())


def test_health_ready_metrics(redis_url: str, store: redis.Redis) -> None:
    write(store, projection("A"), projection("B"))

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            status, _, body = await _get(client, "/healthz")
            assert (status, msgspec.json.decode(body)) == (200, {"status": "ok"})
            status, _, body = await _get(client, "/readyz")
            assert status == 200
            assert msgspec.json.decode(body) == {
                "status": "ready",
                "skus": 2,
                "entries_behind": 0,
                "lag_seconds": 0.0,
            }
            await _get(client, "/v1/availability/A?channel=web")
            await _get(client, "/v1/availability/Q?channel=web")
            status, headers, body = await _get(client, "/metrics")
            assert status == 200
            assert headers["Content-Type"].startswith("text/plain")
            text = body.decode()
            assert (
                'stocksync_api_requests_total{route="/v1/availability/{sku}",status="200"} 1.0'
                in text
            )
            assert (
                'stocksync_api_request_duration_seconds_count{route="/v1/availability/{sku}",'
                'status="404"} 1.0' in text
            )
            assert "stocksync_api_model_skus 2.0" in text
            assert "stocksync_api_ready 1.0" in text
            assert "stocksync_api_changes_behind 0.0" in text
            assert "stocksync_api_change_lag_seconds 0.0" in text
            assert "stocksync_api_model_reloads_total 0.0" in text
            assert "stocksync_api_redis_errors_total" in text
            assert "process_resident_memory_bytes" in text

    run(scenario())


def test_not_ready_until_loaded() -> None:
    settings = make_settings(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there

    async def scenario() -> None:
        async with serving(settings, ready=False) as client:
            status, headers, body = await _get(client, "/readyz")
            assert status == 503
            assert headers["Retry-After"]
            _error(body, "not_ready")
            status, _, body = await _get(client, "/v1/availability/A?channel=web")
            assert status == 503
            _error(body, "not_ready")
            status, _, body = await _post(client, {"skus": ["A"], "channel": "web"})
            assert status == 503
            _error(body, "not_ready")
            status, _, _ = await _get(client, "/healthz")
            assert status == 200

    run(scenario())


def test_correlation_id(redis_url: str, store: redis.Redis) -> None:
    write(store, projection("A"))

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            _, headers, _ = await _get(
                client, "/v1/availability/A?channel=web", headers={"X-Correlation-ID": "req-123"}
            )
            assert headers["X-Correlation-ID"] == "req-123"
            _, headers, _ = await _get(
                client, "/v1/availability/Q?channel=web", headers={"X-Correlation-ID": "req-9"}
            )
            assert headers["X-Correlation-ID"] == "req-9"
            _, first, _ = await _get(client, "/v1/availability/A?channel=web")
            _, second, _ = await _get(client, "/v1/availability/A?channel=web")
            assert first["X-Correlation-ID"] != second["X-Correlation-ID"]
            # Not echoed when it is not plain visible ASCII of a sane length.
            _, headers, _ = await _get(client, "/healthz", headers={"X-Correlation-ID": "x" * 300})
            assert headers["X-Correlation-ID"] != "x" * 300

    run(scenario())


def test_unknown_routes_and_methods(redis_url: str) -> None:
    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            status, _, body = await _get(client, "/v2/availability/A")
            assert status == 404
            _error(body, "not_found")
            async with client.post("/v1/availability/A") as resp:
                assert resp.status == 405
                assert "GET" in resp.headers["Allow"]
                _error(await resp.read(), "method_not_allowed")
            async with client.delete("/v1/availability/query") as resp:
                assert resp.status == 405
                _error(await resp.read(), "method_not_allowed")

    run(scenario())


def test_a_bug_is_500_internal_without_detail(
    redis_url: str, store: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    write(store, projection("A"))

    async def broken(self: AvailabilityHandlers, request: web.Request, sku: str) -> web.Response:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(AvailabilityHandlers, "get", broken)

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            status, headers, body = await _get(
                client, "/v1/availability/A?channel=web", headers={"X-Correlation-ID": "c-500"}
            )
            assert status == 500
            assert "secret" not in _error(body, "internal")
            assert headers["X-Correlation-ID"] == "c-500"

    with caplog.at_level(logging.ERROR, logger="stocksync.api"):
        run(scenario())
    [record] = [r for r in caplog.records if r.exc_info]
    assert "secret internal detail" in str(record.exc_info[1])
    assert record.correlation_id == "c-500"
