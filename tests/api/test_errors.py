"""Every way a request can fail answers the contract's JSON error, with its stable code.

The API's error paths end to end, then :func:`~stocksync.api.errors.error_response`
for every error class and any other exception, and the worker's and the feed's
``/readyz``, which answer through the same function.
"""

from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from stocksync.agents.metrics import WorkerMetrics
from stocksync.api.errors import (
    INTERNAL_MESSAGE,
    ApiError,
    BadRequest,
    InsufficientStock,
    NotReady,
    Rebuilding,
    error_response,
    not_ready,
)
from stocksync.api.handlers import AvailabilityHandlers
from stocksync.api.model import SyncStatus
from stocksync.codecs.holds import ShortLine
from stocksync.config.settings import TokenSettings
from stocksync.daemon.worker import _health_app as worker_health_app
from stocksync.feed.service import _health_app as feed_health_app
from stocksync.store import StoreUnavailable
from tests.api.helpers import Client, make_settings, run, serving
from tests.api.wire import Answer, exchange, read_answers

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


# --- one function answers every error, on every server ------------------------------------


def _api_errors(root: type[ApiError] = ApiError) -> list[type[ApiError]]:
    found = []
    for cls in root.__subclasses__():
        found += [cls, *_api_errors(cls)]
    return found


def _made(cls: type[ApiError]) -> ApiError:
    if cls is InsufficientStock:
        short = [ShortLine(sku="A", requested=2, available=1)]
        return InsufficientStock("1 of 1 lines cannot be held.", short)
    return cls(f"A {cls.__name__} happened.")


def _decoded(response: web.Response) -> dict[str, Any]:
    assert response.content_type == "application/json"
    assert isinstance(response.body, bytes)
    body = msgspec.json.decode(response.body)
    assert set(body) == {"error"}
    return dict(body["error"])


@pytest.mark.parametrize("cls", _api_errors(), ids=lambda cls: cls.__name__)
def test_every_api_error_answers_its_status_and_code(cls: type[ApiError]) -> None:
    error = _made(cls)
    response = error_response(error)
    assert response.status == cls.status
    detail = _decoded(response)
    assert detail["code"] == cls.code and cls.code in CODES
    assert detail["message"] == error.message
    extra = {"lines"} if cls is InsufficientStock else set()
    assert set(detail) == {"code", "message"} | extra


def test_insufficient_stock_keeps_its_short_lines() -> None:
    detail = _decoded(error_response(_made(InsufficientStock)))
    assert detail["lines"] == [{"sku": "A", "requested": 2, "available": 1}]


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (web.HTTPRequestEntityTooLarge(max_size=10, actual_size=20), 413, "too_many_skus"),
        (web.HTTPNotFound(), 404, "not_found"),
        (web.HTTPMethodNotAllowed("POST", ["GET"]), 405, "method_not_allowed"),
        (web.HTTPBadRequest(), 400, "bad_request"),
        (web.HTTPInternalServerError(), 500, "internal"),
        (RuntimeError("the secret detail of a bug"), 500, "internal"),
        (StoreUnavailable("redis://u:hunter2@db down"), 500, "internal"),
    ],
    ids=["413", "404", "405", "400", "aiohttp 500", "a bug", "a library error"],
)
def test_any_other_exception_answers_the_contract_json(
    exc: BaseException, status: int, code: str
) -> None:
    response = error_response(exc)
    assert response.status == status
    detail = _decoded(response)
    assert set(detail) == {"code", "message"} and detail["code"] == code
    if status >= 500:
        assert detail["message"] == INTERNAL_MESSAGE  # no detail reaches the client


def test_a_given_status_wins_and_headers_and_close_are_kept() -> None:
    response = error_response(BadRequest("Slow.", {"X-A": "1"}, close=True), 408)
    assert response.status == 408 and response.headers["X-A"] == "1"
    assert response.keep_alive is False


def test_readiness_codes_pick_their_error() -> None:
    for code, cls in [("not_ready", NotReady), ("model_lost", Rebuilding), ("other", NotReady)]:
        error = not_ready(code, "Not yet.")
        assert type(error) is cls and error.headers["Retry-After"] == "1"


class _Store:
    def __init__(self, answers: bool) -> None:
        self.answers = answers

    async def ping(self) -> None:
        if not self.answers:
            raise StoreUnavailable("Redis is away")


def _worker_app(
    ready: bool = True, healing: bool = False, problem: str | None = None, answers: bool = True
) -> web.Application:
    stages = SimpleNamespace(metrics=WorkerMetrics(), store=_Store(answers))
    healer = SimpleNamespace(healing=healing)
    watch = SimpleNamespace(problem=lambda: problem)
    return worker_health_app(stages, {"ready": ready}, healer, watch)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("app", "code"),
    [
        (lambda: _worker_app(ready=False), "not_ready"),
        (lambda: _worker_app(healing=True), "model_lost"),
        (lambda: _worker_app(problem="no broker answered"), "not_ready"),
        (lambda: _worker_app(answers=False), "not_ready"),
    ],
    ids=["starting", "healing", "broker away", "redis away"],
)
def test_the_workers_readyz_answers_the_contract_json(app: Any, code: str) -> None:
    async def scenario() -> None:
        async with TestClient(TestServer(app())) as client:
            async with client.get("/readyz") as resp:
                assert resp.status == 503
                assert resp.headers["Content-Type"] == "application/json"
                body = await resp.json()
                assert set(body["error"]) == {"code", "message"}
                assert body["error"]["code"] == code
            async with client.get("/nothing-here") as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["code"] == "not_found"
            async with client.post("/readyz") as resp:
                assert resp.status == 405 and resp.headers["Allow"] == "GET,HEAD"
                assert (await resp.json())["error"]["code"] == "method_not_allowed"

    run(scenario())


@pytest.mark.parametrize("code", ["not_ready", "model_lost"])
def test_the_feeds_readyz_answers_the_contract_json(code: str) -> None:
    status = SyncStatus(
        ready=False, reason="Redis lost the model", loaded=False, connected=True, skus=0,
        entries_behind=0, lag_seconds=0.0, last_applied_at=None, reloads=0, redis_errors=0,
        invalid_projections=0, applied_changes=0, code=code,
    )  # fmt: skip
    service = SimpleNamespace(sync=SimpleNamespace(status=lambda: status))

    async def scenario() -> None:
        app = feed_health_app(service)  # type: ignore[arg-type]
        async with TestClient(TestServer(app)) as client, client.get("/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json()) == {
                "error": {"code": code, "message": "Redis lost the model"}
            }

    run(scenario())
