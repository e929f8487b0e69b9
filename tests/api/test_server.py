"""``stocksync.api.server.run``: one or several processes on one port, clean stop on signals."""

from __future__ import annotations

import contextlib
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import msgspec
import pytest
import redis

from stocksync.daemon.services import free_port
from tests.api.helpers import ApiProcess, make_settings, projection, write


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        write(client, projection("A", 4))
        yield client


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_one_process_serves_and_stops_cleanly(
    redis_url: str, store: redis.Redis, sig: signal.Signals
) -> None:
    settings = make_settings(redis_url, port=free_port())
    with ApiProcess(settings) as api:
        status, body = _get(api.url + "/v1/availability/A?channel=web")
        assert status == 200
        assert msgspec.json.decode(body)["version"] == 4
        assert api.stop(sig) == 0
        assert "listening on" in api.output()


def test_several_processes_share_one_port(redis_url: str, store: redis.Redis) -> None:
    settings = make_settings(redis_url, port=free_port())
    with ApiProcess(settings, processes=2) as api:
        # Each process loads its own model; the first ready one does not wait for the other.
        ready_in_a_row = 0
        while ready_in_a_row < 20:
            req = urllib.request.Request(api.url + "/readyz", headers={"Connection": "close"})
            try:
                with urllib.request.urlopen(req, timeout=5):
                    ready_in_a_row += 1
            except urllib.error.HTTPError:
                ready_in_a_row = 0
                time.sleep(0.05)
        seen = set()
        for _ in range(40):
            # A new connection each time, so the kernel spreads them.
            req = urllib.request.Request(
                api.url + "/v1/availability/A?channel=web", headers={"Connection": "close"}
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 200
                seen.add(resp.headers["X-Correlation-ID"].split("-")[0])
        assert len(seen) == 2  # each process has its own correlation-id prefix
        assert api.stop() == 0


def test_a_taken_port_is_a_clear_error(redis_url: str, store: redis.Redis) -> None:
    settings = make_settings(redis_url, port=free_port())
    with ApiProcess(settings) as first:
        second = ApiProcess(settings)
        try:
            assert second.process.wait(60) == 1
            assert "cannot listen on" in second.output()
        finally:
            second.__exit__()
        assert first.stop() == 0
