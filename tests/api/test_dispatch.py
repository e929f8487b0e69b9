"""The hot routes served ahead of aiohttp's router answer exactly as the router does."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import pytest
import redis
from aiohttp import ClientTimeout
from yarl import URL

from stocksync.api.etags import etag
from stocksync.config.settings import TokenSettings
from tests.api.helpers import GENERATION, Client, make_settings, projection, run, serving, write

SECRET = "reader-secret"
TOKENS = [TokenSettings(name="reader", sha256=hashlib.sha256(SECRET.encode()).hexdigest())]
AUTH = {"Authorization": f"Bearer {SECRET}"}
BODY = b'{"skus":["A","B/C","Z"],"channel":"web"}'
TAG = etag(GENERATION, 1, "web", False)
#: A client sending ``Expect: 100-continue`` waits for the server's go-ahead: fail, not hang.
TIMEOUT = ClientTimeout(total=5)

#: (method, raw path, headers, body): every branch of the dispatch and its neighbours.
REQUESTS: list[tuple[str, str, dict[str, str], bytes | None]] = [
    ("GET", "/v1/availability/A?channel=web", AUTH, None),
    ("HEAD", "/v1/availability/A?channel=web", AUTH, None),
    ("GET", "/v1/availability/A?channel=web&detail=nodes", AUTH, None),
    ("GET", "/v1/availability/A?detail=nodes&channel=store", AUTH, None),
    ("GET", "/v1/availability/A?channel=web&channel=store", AUTH, None),
    ("GET", "/v1/availability/A?channel=nope", AUTH, None),
    ("GET", "/v1/availability/A?channel=web&detail=all", AUTH, None),
    ("GET", "/v1/availability/A", AUTH, None),
    ("GET", "/v1/availability/A?channel=web", {**AUTH, "If-None-Match": TAG}, None),
    ("GET", "/v1/availability/A?channel=web", {**AUTH, "If-None-Match": f'W/"2", {TAG}'}, None),
    ("GET", "/v1/availability/A?channel=web&detail=nodes", {**AUTH, "If-None-Match": TAG}, None),
    ("GET", "/v1/availability/A?chanel=web", AUTH, None),
    ("HEAD", "/v1/availability/query", AUTH, None),
    ("GET", "/v1/availability/A?channel=web", {}, None),
    ("GET", "/v1/availability/A?channel=web", {"Authorization": "Bearer wrong"}, None),
    ("GET", "/v1/availability/Z?channel=web", AUTH, None),
    ("GET", "/v1/availability/B/C?channel=web", AUTH, None),
    ("GET", "/v1/availability/B%2FC?channel=web", AUTH, None),
    ("GET", "/v1/availability/B%2fC?channel=web", AUTH, None),
    ("GET", "/v1/availability/%41?channel=web", AUTH, None),
    ("GET", "/v1/availability/%25?channel=web", AUTH, None),
    ("GET", "/v1/availability/A%20B?channel=web", AUTH, None),
    ("GET", "/v1/availability/?channel=web", AUTH, None),
    ("GET", "/v1/availability/query?channel=web", AUTH, None),
    ("GET", "/v1/availability?channel=web", AUTH, None),
    ("GET", "/v1/availabilityA?channel=web", AUTH, None),
    ("GET", "/v1//availability/A?channel=web", AUTH, None),
    ("POST", "/v1/availability/A", AUTH, BODY),
    ("PUT", "/v1/availability/query", AUTH, BODY),
    ("POST", "/v1/availability/query", AUTH, BODY),
    ("POST", "/v1/availability/query", {}, BODY),
    ("POST", "/v1/availability/query", AUTH, b'{"skus":["A"],"channel":"web","detail":true}'),
    ("POST", "/v1/availability/query", AUTH, b'{"skus":["A","bad sku"],"channel":"web"}'),
    ("POST", "/v1/availability/query", AUTH, b"not json"),
    ("POST", "/v1/availability/query", {**AUTH, "Expect": "100-continue"}, BODY),
    ("POST", "/v1/availability/query", {**AUTH, "Expect": "something-else"}, BODY),
    ("POST", "/v1/availability/query/", AUTH, BODY),
    ("POST", "/v1/availability/query?channel=web", AUTH, BODY),
    ("GET", "/healthz", {}, None),
    ("GET", "/v1/openapi.json", {}, None),
    ("GET", "/v1/openapi.json", AUTH, None),
    ("GET", "/v1/openapi.json?x=1", AUTH, None),
    ("GET", "/v1/holds/h-1", AUTH, None),
    ("GET", "/nowhere", {}, None),
]


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        write(client, projection("A"), projection("B/C", channels=["store"]))
        yield client


async def _answers(client: Client) -> list[tuple[int, dict[str, str], bytes]]:
    answers = []
    for i, (method, path, headers, body) in enumerate(REQUESTS):
        url = URL(str(client.make_url("/")).rstrip("/") + path, encoded=True)
        sent = {**headers, "X-Correlation-ID": f"c-{i}"}
        async with client.session.request(
            method, url, headers=sent, data=body, timeout=TIMEOUT
        ) as resp:
            got = {k: v for k, v in resp.headers.items() if k != "Date"}
            answers.append((resp.status, got, await resp.read()))
    return answers


def test_hot_routes_answer_as_the_router_does(redis_url: str, store: redis.Redis) -> None:
    async def scenario() -> None:
        settings = make_settings(redis_url, tokens=TOKENS)
        async with serving(settings, hot_routes=True) as client:
            hot = await _answers(client)
        async with serving(settings, hot_routes=False) as client:
            routed = await _answers(client)
        for request, got, expected in zip(REQUESTS, hot, routed, strict=True):
            assert got == expected, request[:2]
        assert {status for status, _, _ in hot} >= {200, 304, 400, 401, 404, 405}

    run(scenario())
