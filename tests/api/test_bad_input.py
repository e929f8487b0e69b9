"""Hostile and odd input: every answer is a clean 4xx with the contract's error body."""

from __future__ import annotations

import asyncio
import io
import logging

import msgspec
import pytest
import redis
from yarl import URL

from stocksync.api.protocol import reason_of
from tests.api.helpers import Client, make_settings, run, serving


def _code(body: bytes) -> str:
    code: str = msgspec.json.decode(body)["error"]["code"]
    return code


async def _raw_get(client: Client, path: str) -> tuple[int, bytes]:
    url = URL(str(client.make_url("/")).rstrip("/") + path, encoded=True)
    async with client.session.get(url) as resp:
        return resp.status, await resp.read()


def test_odd_paths(redis_url: str, store: redis.Redis) -> None:
    cases = {
        "/v1/availability/%00?channel=web": (400, "invalid_sku"),
        "/v1/availability/A%00?channel=web": (400, "invalid_sku"),
        "/v1/availability/%zz?channel=web": (400, "invalid_sku"),
        "/v1/availability/A%0A?channel=web": (400, "invalid_sku"),
        "/v1/availability/" + "A" * 1000 + "?channel=web": (400, "invalid_sku"),
        "/v1/availability/%F0%9F%98%80?channel=web": (400, "invalid_sku"),
        "/v1/availability/%FF%FE?channel=web": (400, "invalid_sku"),
        "/v1/availability/../../etc/passwd?channel=web": (404, "unknown_sku"),
        "/v1/availability/A?channel=%00": (404, "unknown_channel"),
        "/v1/availability/A?channel=web&channel=store": (400, "bad_request"),  # given twice
        "/v1/availability/A?chanel=web": (400, "bad_request"),  # unknown
        "/v1/availability/A?channel=web&detail=%00": (400, "bad_request"),
        "/v1/availability/A/?channel=web": (404, "unknown_sku"),  # "/" is allowed
        "/v1//availability/A?channel=web": (404, "not_found"),
    }

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            for path, (status, code) in cases.items():
                got, body = await _raw_get(client, path)
                assert got == status, path
                if code:
                    assert _code(body) == code, path

    run(scenario())


def test_a_request_line_too_long_for_the_http_parser(redis_url: str, store: redis.Redis) -> None:
    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            status, body = await _raw_get(client, "/v1/availability/" + "A" * 20_000)
            # aiohttp's parser answers before the application sees the request.
            assert 400 <= status < 500
            assert b"Traceback" not in body
            assert b"File " not in body

    run(scenario())


def test_bad_bodies(redis_url: str, store: redis.Redis) -> None:
    cases: list[tuple[bytes, int, str]] = [
        (b"\xff\xfe\x00garbage", 400, "bad_request"),
        (b"[" * 10_000 + b"]" * 10_000, 400, "bad_request"),
        (b'{"skus": ["A"], "channel": "web", "detail": null}', 400, "bad_request"),
        (b'{"skus": [null], "channel": "web"}', 400, "bad_request"),
        (b'{"skus": [["A"]], "channel": "web"}', 400, "bad_request"),
        (b'{"skus": ["A"], "channel": "web"} trailing', 400, "bad_request"),
        (b'{"skus": ["\\u0000"], "channel": "web"}', 400, "invalid_sku"),
        (b'{"skus": ["A\\n"], "channel": "web"}', 400, "invalid_sku"),
        (b'{"skus": ["' + b"A" * 65 + b'"], "channel": "web"}', 400, "invalid_sku"),
        ('{"skus": ["caf\u00e9"], "channel": "web"}'.encode(), 400, "invalid_sku"),
        (msgspec.json.encode({"skus": ["A"] * 10_000, "channel": "web"}), 413, "too_many_skus"),
    ]

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            for body, status, code in cases:
                async with client.post("/v1/availability/query", data=body) as resp:
                    assert resp.status == status, body[:60]
                    assert _code(await resp.read()) == code, body[:60]

    run(scenario())


def test_a_ten_megabyte_body(redis_url: str, store: redis.Redis) -> None:
    body = b'{"skus": ["' + b"A" * 10_000_000 + b'"]}'

    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            async with client.post("/v1/availability/query", data=io.BytesIO(body)) as resp:
                assert resp.status == 413
                assert _code(await resp.read()) == "too_many_skus"
            # The server is unharmed.
            async with client.get("/v1/availability/A?channel=web") as resp:
                assert resp.status == 200

    run(scenario())


def test_many_concurrent_clients(redis_url: str, store: redis.Redis) -> None:
    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:

            async def one(i: int) -> int:
                sku = "A" if i % 2 else f"MISSING-{i}"
                async with client.get(f"/v1/availability/{sku}?channel=web") as resp:
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*(one(i) for i in range(200)))
            assert sorted(set(statuses)) == [200, 404]

    run(scenario())


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/availability/A HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /v1/availability/\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/availability/A HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    ],
    ids=["method", "content-length", "control-byte", "header-too-long", "tls-hello"],
)
def test_requests_aiohttp_cannot_parse_get_the_json_error_and_no_traceback(
    redis_url: str, store: redis.Redis, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> bytes:
        async with serving(make_settings(redis_url)) as client:
            assert client.port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
            try:
                writer.write(raw)
                await writer.drain()
                return await asyncio.wait_for(reader.read(), 5)
            finally:
                writer.close()

    with caplog.at_level(logging.DEBUG):
        answer = run(scenario())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0]
    assert b"content-type: application/json" in head.lower()
    assert _code(body) == "bad_request"
    assert b"Traceback" not in body and b"aiohttp" not in body
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.exc_info]
    assert [r for r in caplog.records if "unparseable request" in r.getMessage()]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("Invalid method encountered:\n\n  b'GARBAGE'\n     ^", "Invalid method encountered"),
        ("   \n ", "malformed request"),
        (None, "malformed request"),
    ],
)
def test_the_reason_of_an_unparseable_request_is_one_line(
    message: str | None, reason: str
) -> None:
    assert reason_of(None, message) == reason
