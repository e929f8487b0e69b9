"""Access: bearer tokens by SHA-256, scopes, per-token rate limits; open mode says so."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis

from stocksync.api.auth import Authenticator, TokenBucket
from stocksync.api.errors import Forbidden, RateLimited, Unauthorized
from stocksync.config.settings import TokenSettings
from tests.api.helpers import make_settings, projection, run, serving, write

READER = "reader-secret-1"
ADMIN = "admin-secret-2"
LIMITED = "limited-secret-3"


def _token(name: str, secret: str, **options: Any) -> TokenSettings:
    return TokenSettings(name=name, sha256=hashlib.sha256(secret.encode()).hexdigest(), **options)


TOKENS = [
    _token("reader", READER),
    _token("ops", ADMIN, scopes=["admin"]),
    _token("limited", LIMITED, rate=1.0, burst=2),
]


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _code(body: bytes) -> str:
    code: str = msgspec.json.decode(body)["error"]["code"]
    return code


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        write(client, projection("A"))
        yield client


def test_tokens_guard_v1(redis_url: str, store: redis.Redis) -> None:
    path = "/v1/availability/A?channel=web"

    async def scenario() -> None:
        async with serving(make_settings(redis_url, tokens=TOKENS)) as client:
            async with client.get(path) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                assert _code(await resp.read()) == "unauthorized"
            for header in ("Bearer nope", "Basic " + READER, "Bearer", READER, "Bearer  "):
                async with client.get(path, headers={"Authorization": header}) as resp:
                    assert resp.status == 401, header
                    assert "Bearer" in resp.headers["WWW-Authenticate"]
                    assert _code(await resp.read()) == "unauthorized"
            for secret in (READER, ADMIN):
                async with client.get(path, headers=_bearer(secret)) as resp:
                    assert resp.status == 200
                async with client.post(
                    "/v1/availability/query",
                    json={"skus": ["A"], "channel": "web"},
                    headers=_bearer(secret),
                ) as resp:
                    assert resp.status == 200
            # Every /v1 path, even one that does not exist, needs a token first.
            async with client.get("/v1/nothing-here") as resp:
                assert resp.status == 401
            async with client.post("/v1/availability/query", json={}) as resp:
                assert resp.status == 401
            # Operational endpoints and the OpenAPI document need none.
            for open_path in ("/healthz", "/readyz", "/metrics", "/v1/openapi.json"):
                async with client.get(open_path) as resp:
                    assert resp.status == 200, open_path

    run(scenario())


def test_rate_limit_per_token(redis_url: str, store: redis.Redis) -> None:
    path = "/v1/availability/A?channel=web"

    async def scenario() -> None:
        async with serving(make_settings(redis_url, tokens=TOKENS)) as client:
            statuses = []
            for _ in range(3):
                async with client.get(path, headers=_bearer(LIMITED)) as resp:
                    statuses.append(resp.status)
                    if resp.status == 429:
                        assert resp.headers["Retry-After"] == "1"
                        assert _code(await resp.read()) == "rate_limited"
            assert statuses == [200, 200, 429]
            # Other tokens have their own buckets (the reader is unlimited).
            for _ in range(5):
                async with client.get(path, headers=_bearer(READER)) as resp:
                    assert resp.status == 200

    run(scenario())


def test_open_mode_warns_at_start(
    redis_url: str, store: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with (
            serving(make_settings(redis_url)) as client,
            client.get("/v1/availability/A?channel=web") as resp,
        ):
            assert resp.status == 200

    with caplog.at_level(logging.WARNING, logger="stocksync.api"):
        run(scenario())
    assert any("no API tokens configured" in r.getMessage() for r in caplog.records)


def test_scope_is_required() -> None:
    auth = Authenticator([_token("reader", READER), _token("ops", ADMIN, scopes=["admin"])])
    assert auth.check(f"Bearer {READER}") == "reader"
    assert auth.check(f"bearer {ADMIN}", "admin") == "ops"
    with pytest.raises(Forbidden) as raised:
        auth.check(f"Bearer {READER}", "admin")
    assert 'error="insufficient_scope"' in raised.value.headers["WWW-Authenticate"]
    with pytest.raises(Unauthorized):
        auth.check(f"Bearer {READER}x")
    assert not Authenticator([]).enabled


def test_token_bucket() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=2.0, capacity=3.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() == 0.0
    now[0] += 100
    assert [bucket.take() for _ in range(4)][-1] > 0  # refills up to capacity only


def test_rate_limited_error_carries_retry_after() -> None:
    now = [0.0]
    auth = Authenticator([_token("slow", LIMITED, rate=0.1)], clock=lambda: now[0])
    assert auth.check(f"Bearer {LIMITED}") == "slow"
    with pytest.raises(RateLimited) as raised:
        auth.check(f"Bearer {LIMITED}")
    assert raised.value.headers["Retry-After"] == "10"
