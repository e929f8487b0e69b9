"""Every way a request can fail answers the contract's JSON error, with its stable code."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from stocksync.api.handlers import AvailabilityHandlers
from stocksync.config.settings import TokenSettings
from tests.api.helpers import make_settings, projection, run, serving, write
from tests.api.wire import Answer, exchange, read_answers

Client = TestClient[Any, Any]
READER = "reader-secret"
HOLDER = "holder-secret"
LIMITED = "limited-secret"
TOKENS = [
    TokenSettings(name="reader", sha256=hashlib.sha256(READER.encode()).hexdigest()),
    TokenSettings(
        name="holder", sha256=hashlib.sha256(HOLDER.encode()).hexdigest(), scopes=["holds:write"]
    ),
    TokenSettings(
        name="limited", sha256=hashlib.sha256(LIMITED.encode()).hexdigest(), rate=0.01, burst=1
    ),
]
#: Codes of the contract, and the additions stocksync documents.
CODES = {
    "invalid_sku",
    "unknown_sku",
    "unknown_channel",
    "bad_request",
    "too_many_skus",
    "unauthorized",
    "forbidden",
    "rate_limited",
    "not_ready",
    "not_found",
    "method_not_allowed",
    "request_timeout",
    "overloaded",
    "internal",
    "insufficient_stock",
    "hold_conflict",
    "hold_ended",
    "unknown_hold",
    "model_lost",
}


def _request(method: str, target: str, secret: str | None = READER, body: bytes = b"") -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: x", "Connection: close"]
    if secret is not None:
        head.append(f"Authorization: Bearer {secret}")
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


BATCH = "/v1/availability/query"
#: (raw request, expected status, expected code): one per error path.
CASES: list[tuple[bytes, int, str]] = [
    (_request("GET", "/v1/availability/bad%20sku?channel=web"), 400, "invalid_sku"),
    (_request("GET", "/v1/availability/A?chanel=web"), 400, "bad_request"),
    (_request("GET", "/v1/availability/A?channel=web&channel=web"), 400, "bad_request"),
    (_request("GET", "/v1/availability/A"), 400, "bad_request"),  # two channels configured
    (_request("GET", "/v1/availability/A?channel=web&detail=all"), 400, "bad_request"),
    (_request("POST", BATCH, body=b"not json"), 400, "bad_request"),
    (_request("POST", BATCH, body=b'{"skus":["A"],"chanel":"web"}'), 400, "bad_request"),
    (_request("POST", BATCH + "?channel=web", body=b'{"skus":["A"]}'), 400, "bad_request"),
    (_request("GET", "/v1/openapi.json?format=yaml"), 400, "bad_request"),
    (b"GARBAGE / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (_request("GET", "/v1/availability/A?channel=web", secret=None), 401, "unauthorized"),
    (_request("GET", "/v1/openapi.json", secret=None), 401, "unauthorized"),
    (_request("GET", "/v1/availability/A?channel=web", secret=HOLDER), 403, "forbidden"),
    (_request("GET", "/v1/holds/cart-1"), 403, "forbidden"),
    (_request("GET", "/v1/availability/NOPE?channel=web"), 404, "unknown_sku"),
    (_request("GET", "/v1/availability/A?channel=nope"), 404, "unknown_channel"),
    (_request("POST", BATCH, body=b'{"skus":["A"],"channel":"nope"}'), 404, "unknown_channel"),
    (_request("GET", "/v2/anything"), 404, "not_found"),
    (_request("GET", "/v1/holds/cart-1", secret=HOLDER), 404, "unknown_hold"),
    (_request("GET", "/v1/holds/a/b/c", secret=HOLDER), 404, "not_found"),
    (_request("POST", "/v1/holds", secret=HOLDER, body=b"{"), 400, "bad_request"),
    (b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),
    (_request("GET", BATCH), 405, "method_not_allowed"),
    (_request("DELETE", "/v1/availability/A"), 405, "method_not_allowed"),
    (_request("POST", BATCH, body=b'{"skus":[' + b'"A",' * 1000 + b'"A"]}'), 413, "too_many_skus"),
    (_request("POST", BATCH, body=b" " * 70_000), 413, "too_many_skus"),
]


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        write(client, projection("A"))
        yield client


def _port(client: Client) -> int:
    assert client.port is not None
    return client.port


def _is_contract_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status
    assert answer.headers["content-type"] == "application/json"
    assert answer.code() == code
    assert b"Traceback" not in answer.body and b"aiohttp" not in answer.body


def test_every_error_path_answers_the_contract_json(redis_url: str, store: redis.Redis) -> None:
    settings = make_settings(redis_url, tokens=TOKENS, max_body_bytes=65_536, auth_failure_burst=50)

    async def scenario() -> None:
        async with serving(settings) as client:
            port = _port(client)
            for raw, status, code in CASES:
                answers, _ = await exchange(port, raw)
                assert len(answers) == 1, raw[:60]
                _is_contract_error(answers[0], status, code)
                assert code in CODES
            # 429, the token's own rate.
            statuses = []
            for _ in range(2):
                (answer,), _ = await exchange(
                    port, _request("GET", "/v1/availability/A?channel=web", secret=LIMITED)
                )
                statuses.append(answer.status)
            _is_contract_error(answer, 429, "rate_limited")
            assert statuses == [200, 429]

    run(scenario())


def test_deadline_refusal_and_failure_errors_answer_the_contract_json(
    redis_url: str, store: redis.Redis
) -> None:
    settings = make_settings(
        redis_url,
        tokens=TOKENS,
        header_timeout_s=0.3,
        body_timeout_s=0.3,
        max_connections=2,
        auth_failure_burst=1,
    )

    async def scenario() -> None:
        async with serving(settings) as client:
            port = _port(client)
            await client.session.close()
            (answer,), _ = await exchange(port, b"GET / HTTP/1.1\r\n")
            _is_contract_error(answer, 408, "request_timeout")
            raw = _request("POST", BATCH).replace(b"Content-Length: 0", b"Content-Length: 10")
            (answer,), _ = await exchange(port, raw + b"{")
            _is_contract_error(answer, 408, "request_timeout")
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            (answer,), _ = await exchange(port, b"")
            _is_contract_error(answer, 503, "overloaded")
            for _, writer in held:
                writer.close()
            await asyncio.sleep(0.1)
            for expected in (401, 429):
                (answer,), _ = await exchange(port, _request("GET", BATCH, secret="wrong"))
                assert answer.status == expected
            _is_contract_error(answer, 429, "rate_limited")

    run(scenario())


def test_not_ready_and_internal_errors_answer_the_contract_json(
    redis_url: str, store: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: AvailabilityHandlers, request: Any, sku: str) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(AvailabilityHandlers, "get", broken)
    unreachable = make_settings("redis://127.0.0.1:1/0")

    async def scenario() -> None:
        async with serving(unreachable, ready=False) as client:
            (answer,), _ = await exchange(
                _port(client), _request("POST", BATCH, body=b'{"skus":["A"],"channel":"web"}')
            )
            _is_contract_error(answer, 503, "not_ready")
            (answer,), _ = await exchange(_port(client), _request("GET", "/readyz"))
            _is_contract_error(answer, 503, "not_ready")
        async with serving(make_settings(redis_url)) as client:
            (answer,), _ = await exchange(
                _port(client), _request("GET", "/v1/availability/A?channel=web")
            )
            _is_contract_error(answer, 500, "internal")
            assert b"a bug" not in answer.body

    run(scenario())


def test_pipelined_answers_keep_their_order_up_to_the_malformed_one(
    redis_url: str, store: redis.Redis
) -> None:
    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(client))
            good = b"GET /v1/availability/A?channel=%s HTTP/1.1\r\nHost: x\r\n\r\n"
            writer.write(
                good % b"web" + good % b"store" + b"GET /\x00 HTTP/1.1\r\n\r\n" + good % b"web"
            )
            answers = await read_answers(reader, 3)
            writer.close()
            assert [a.status for a in answers] == [200, 200, 400]
            assert [a.json()["channel"] for a in answers[:2]] == ["web", "store"]  # type: ignore[index]
            _is_contract_error(answers[2], 400, "bad_request")

    run(scenario())
