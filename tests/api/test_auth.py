"""Access: bearer tokens by SHA-256, scopes that forbid, rate limits; open mode says so."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import msgspec
import pytest
import redis

from stocksync.api.auth import Authenticator, address_slot, scope_for
from stocksync.api.errors import Forbidden, RateLimited, Unauthorized
from stocksync.api.hoststate import HostState
from stocksync.config.settings import TokenSettings
from tests.api.helpers import make_settings, run, serving

READER = "reader-secret-1"
ADMIN = "admin-secret-2"
LIMITED = "limited-secret-3"
HOLDER = "holder-secret-4"


def _token(name: str, secret: str, **options: Any) -> TokenSettings:
    return TokenSettings(name=name, sha256=hashlib.sha256(secret.encode()).hexdigest(), **options)


TOKENS = [
    _token("reader", READER),
    _token("ops", ADMIN, scopes=["admin"]),
    _token("limited", LIMITED, rate=1.0, burst=2),
    _token("holder", HOLDER, scopes=["holds:write"]),
]


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _code(body: bytes) -> str:
    code: str = msgspec.json.decode(body)["error"]["code"]
    return code


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
            # The OpenAPI document is under /v1 and needs a token too (any scope).
            async with client.get("/v1/openapi.json") as resp:
                assert resp.status == 401
                assert _code(await resp.read()) == "unauthorized"
            for secret in (READER, ADMIN, HOLDER):
                async with client.get("/v1/openapi.json", headers=_bearer(secret)) as resp:
                    assert resp.status == 200, secret
            # Operational endpoints need none.
            for open_path in ("/healthz", "/readyz", "/metrics"):
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


def test_scopes_forbid_what_they_do_not_grant(redis_url: str, store: redis.Redis) -> None:
    async def scenario() -> None:
        async with serving(make_settings(redis_url, tokens=TOKENS)) as client:
            # holds:write does not read availability.
            async with client.get("/v1/availability/A?channel=web", headers=_bearer(HOLDER)) as r:
                assert r.status == 403
                assert 'scope="availability:read"' in r.headers["WWW-Authenticate"]
                assert _code(await r.read()) == "forbidden"
            async with client.post(
                "/v1/availability/query", json={"skus": ["A"]}, headers=_bearer(HOLDER)
            ) as r:
                assert r.status == 403
                assert _code(await r.read()) == "forbidden"
            # availability:read does not reach holds.
            for method in ("GET", "POST", "DELETE"):
                async with client.request(method, "/v1/holds/cart-1", headers=_bearer(READER)) as r:
                    assert r.status == 403, method
                    assert _code(await r.read()) == "forbidden"
            for secret in (HOLDER, ADMIN):
                async with client.get("/v1/holds/cart-1", headers=_bearer(secret)) as r:
                    assert r.status == 404, secret
                    assert _code(await r.read()) == "unknown_hold"
            # Under /v1/holds, even a path with no endpoint needs the scope first.
            async with client.get("/v1/holds/a/b/c", headers=_bearer(READER)) as r:
                assert r.status == 403
            # admin reads everything.
            async with client.get("/v1/availability/A?channel=web", headers=_bearer(ADMIN)) as r:
                assert r.status == 200

    run(scenario())


def test_failed_authentication_is_limited_per_address(redis_url: str, store: redis.Redis) -> None:
    path = "/v1/availability/A?channel=web"
    settings = make_settings(redis_url, tokens=TOKENS, auth_failure_rate=0.5, auth_failure_burst=5)

    async def scenario() -> None:
        async with serving(settings) as client:
            statuses = []
            for i in range(8):
                async with client.get(path, headers=_bearer(f"guess-{i}")) as resp:
                    statuses.append(resp.status)
                    if resp.status == 429:
                        assert _code(await resp.read()) == "rate_limited"
                        assert int(resp.headers["Retry-After"]) >= 1
            assert statuses == [401] * 5 + [429] * 3
            # Past the limit even the right token is not looked at: a guesser learns nothing.
            async with client.get(path, headers=_bearer(READER)) as resp:
                assert resp.status == 429
            # Missing headers count as failures too; so do unknown /v1 paths.
            async with client.get("/v1/nothing") as resp:
                assert resp.status == 429
            # Paths that need no token are not affected.
            async with client.get("/healthz") as resp:
                assert resp.status == 200

    run(scenario())


def test_the_failure_limit_refills_and_keys_on_the_address() -> None:
    now = [1000.0]
    host = HostState(len(TOKENS), clock=lambda: now[0])
    auth = Authenticator(TOKENS, host, failure_rate=1.0, failure_burst=2)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            auth.check("Bearer wrong", remote="192.0.2.1")
    with pytest.raises(RateLimited):
        auth.check(f"Bearer {READER}", remote="192.0.2.1")
    # Another address has its own limit; the hosts of one IPv6 /64 share one.
    assert auth.check(f"Bearer {READER}", remote="192.0.2.2") == "reader"
    assert address_slot("2001:db8::1") == address_slot("2001:db8::ffff:1")
    assert address_slot("2001:db8::1") != address_slot("2001:db8:0:1::1")
    now[0] += 1.0
    assert auth.check(f"Bearer {READER}", remote="192.0.2.1") == "reader"


def test_scope_of_each_path() -> None:
    assert scope_for("/v1/availability/A") == "availability:read"
    assert scope_for("/v1/availability/query") == "availability:read"
    assert scope_for("/v1/holds") == "holds:write"
    assert scope_for("/v1/holds/cart-1/extend") == "holds:write"
    assert scope_for("/v1/holdsx") is None
    assert scope_for("/v1/openapi.json") is None


def test_scope_is_required() -> None:
    auth = Authenticator([_token("reader", READER), _token("ops", ADMIN, scopes=["admin"])])
    assert auth.check(f"Bearer {READER}") == "reader"
    assert auth.check(f"bearer {ADMIN}", "admin") == "ops"
    assert auth.check(f"bearer {ADMIN}", "holds:write") == "ops"
    assert auth.check(f"Bearer {READER}", None) == "reader"
    with pytest.raises(Forbidden) as raised:
        auth.check(f"Bearer {READER}", "admin")
    assert 'error="insufficient_scope"' in raised.value.headers["WWW-Authenticate"]
    with pytest.raises(Forbidden):
        auth.check(f"Bearer {READER}", "holds:write")
    with pytest.raises(Unauthorized):
        auth.check(f"Bearer {READER}x")
    assert not Authenticator([]).enabled


@pytest.mark.parametrize("shared", [False, True])
def test_token_bucket(shared: bool) -> None:
    now = [100.0]
    host = HostState(1, shared=shared, clock=lambda: now[0])
    try:
        bucket = host.token_bucket(0)
        assert [host.take(bucket, 2.0, 3.0) for _ in range(3)] == [0.0, 0.0, 0.0]
        assert host.take(bucket, 2.0, 3.0) == pytest.approx(0.5)
        now[0] += 0.5
        assert host.take(bucket, 2.0, 3.0) == 0.0
        now[0] += 100
        assert [host.take(bucket, 2.0, 3.0) for _ in range(4)][-1] > 0  # refills to capacity only
    finally:
        host.close()


def test_rate_limited_error_carries_retry_after() -> None:
    now = [1.0]
    host = HostState(1, clock=lambda: now[0])
    auth = Authenticator([_token("slow", LIMITED, rate=0.1)], host)
    assert auth.check(f"Bearer {LIMITED}") == "slow"
    with pytest.raises(RateLimited) as raised:
        auth.check(f"Bearer {LIMITED}")
    assert raised.value.headers["Retry-After"] == "10"
