"""``stocksync api --processes N``: a dead server is restarted, limits hold for the host."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from stocksync.config.settings import TokenSettings
from stocksync.daemon.services import free_port
from tests.api.helpers import ApiProcess, make_settings, projection, write

pytestmark = pytest.mark.slow

SECRET = "limited-secret"


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        write(client, projection("A", 4))
        yield client


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def _status(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Status and correlation-id prefix of one request on a new connection."""
    request = urllib.request.Request(url, headers={"Connection": "close", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.headers["X-Correlation-ID"].split("-")[0]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("X-Correlation-ID", "").split("-")[0]


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def _wait_all_ready(api: ApiProcess) -> None:
    """Until /readyz is 200 on 20 new connections in a row (so on every process)."""
    in_a_row = 0
    deadline = time.monotonic() + 30
    while in_a_row < 20:
        assert time.monotonic() < deadline, api.output()
        status, _ = _status(api.url + "/readyz")
        in_a_row = in_a_row + 1 if status == 200 else 0
        if status != 200:
            time.sleep(0.05)


def test_a_killed_server_is_restarted_and_the_port_keeps_answering(
    redis_url: str, store: redis.Redis
) -> None:
    settings = make_settings(redis_url, port=free_port(), shutdown_timeout_s=4)
    with ApiProcess(settings, processes=2) as api:
        _wait_all_ready(api)
        supervisor = api.process.pid
        first = _children(supervisor)
        assert len(first) == 2
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        # Requests on new connections all the while: the other server answers them. The
        # kernel resets what was queued for the dead one's listener at that instant
        # (unless net.ipv4.tcp_migrate_req=1 hands it over); nothing after that is lost.
        statuses: list[tuple[float, int | str]] = []
        deadline = killed + 20
        while True:
            sent = time.monotonic() - killed
            try:
                statuses.append((sent, _status(api.url + "/v1/availability/A?channel=web")[0]))
            except ConnectionError as exc:
                statuses.append((sent, type(exc).__name__))
            now = _children(supervisor)
            if len(now) == 2 and victim not in now:
                break
            assert time.monotonic() < deadline, api.output()
            time.sleep(0.02)
        assert len(statuses) >= 5, statuses
        assert {status for sent, status in statuses if sent > 0.2} == {200}, statuses
        assert sum(status != 200 for _, status in statuses) <= 2, statuses
        assert api.process.poll() is None
        _wait_all_ready(api)
        # Every server reports the supervisor's count, the new one too.
        for _ in range(10):
            assert _metric(api.url, "stocksync_api_process_restarts_total") == 1
        assert f"API process 0 (pid {victim}) was killed by SIGKILL" in api.output() or (
            f"(pid {victim}) was killed by SIGKILL" in api.output()
        )
        assert "restarted API process" in api.output()

        # SIGTERM stops every server within the shutdown timeout, even with a client
        # holding a request open.
        with contextlib.closing(
            __import__("socket").create_connection(("127.0.0.1", settings.api.port))
        ) as hanging:
            hanging.sendall(
                b"POST /v1/availability/query HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
            )
            time.sleep(0.2)
            servers = _children(supervisor)
            started = time.monotonic()
            assert api.stop(signal.SIGTERM, timeout=15) == 0
            took = time.monotonic() - started
        assert took < settings.api.shutdown_timeout_s + 1.5, took
        for pid in servers:
            assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_token_rate_is_for_the_whole_host(redis_url: str, store: redis.Redis) -> None:
    token = TokenSettings(
        name="limited", sha256=hashlib.sha256(SECRET.encode()).hexdigest(), rate=5.0, burst=5
    )
    settings = make_settings(
        redis_url, port=free_port(), tokens=[token], auth_failure_rate=2.0, auth_failure_burst=10
    )
    url = f"http://127.0.0.1:{settings.api.port}/v1/availability/A?channel=web"
    with ApiProcess(settings, processes=2) as api:
        _wait_all_ready(api)
        auth = {"Authorization": f"Bearer {SECRET}"}
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: _status(url, auth), range(160)))
        elapsed = time.monotonic() - started
        ok = [prefix for status, prefix in results if status == 200]
        assert {status for status, _ in results} == {200, 429}
        assert len({prefix for _, prefix in results}) == 2, "both processes answered"
        allowed = 5 + 5.0 * elapsed  # the burst, then the rate, for the host
        # Per process, each would allow as much again (twice this).
        assert len(ok) <= allowed * 1.2 + 1, (len(ok), elapsed)
        assert len(ok) >= min(allowed, 160) * 0.6, (len(ok), elapsed)

        # Failed authentications are limited per address for the host, too.
        wrong = {"Authorization": "Bearer wrong"}
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: _status(url, wrong), range(60)))
        elapsed = time.monotonic() - started
        refused = [prefix for status, prefix in results if status == 401]
        assert len({prefix for _, prefix in results}) == 2
        assert len(refused) <= (10 + 2.0 * elapsed) * 1.2 + 1, (len(refused), elapsed)
        assert {status for status, _ in results} == {401, 429}
        assert api.stop() == 0
