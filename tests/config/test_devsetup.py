"""The running dev setup: its state file, and the loader using it only without connections."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stocksync.config import load_configuration
from stocksync.config.devsetup import (
    STATE_ENV,
    DevSetup,
    remove_state,
    running_setup,
    state_path,
    write_state,
)


def setup_of(pid: int) -> DevSetup:
    return DevSetup(
        pid=pid,
        started_at="2026-12-01T09:00:00+00:00",
        broker="kafka://127.0.0.1:39092",
        redis_url="redis://127.0.0.1:6379/0",
        redis_namespace="stocksync-dev",
        topic_prefix="stocksync",
        api_url="http://127.0.0.1:8080",
        worker_url="http://127.0.0.1:45000",
        data_dir="/tmp/x",
    )


def test_where_the_state_file_is(tmp_path: Path) -> None:
    assert state_path({STATE_ENV: str(tmp_path / "s.json")}) == tmp_path / "s.json"
    assert state_path({"XDG_RUNTIME_DIR": str(tmp_path)}) == tmp_path / "stocksync" / "dev.json"
    fallback = state_path({"XDG_RUNTIME_DIR": str(tmp_path / "missing")})
    assert fallback.parent.name == f"stocksync-{os.getuid()}"


def test_a_live_setup_is_found_and_removed_only_by_its_writer(tmp_path: Path) -> None:
    path = tmp_path / "run" / "dev.json"
    env = {STATE_ENV: str(path)}
    # A live process whose command line names stocksync, like `stocksync dev`.
    code = "import time; print('up', flush=True); time.sleep(30)"
    with subprocess.Popen(
        [sys.executable, "-c", code, "stocksync", "dev"], stdout=subprocess.PIPE
    ) as dev:
        try:
            assert dev.stdout is not None and dev.stdout.readline() == b"up\n"
            found = setup_of(dev.pid)
            write_state(path, found)
            modes = (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777)
            assert modes == (0o600, 0o700)
            assert running_setup(env) == found
            remove_state(path, dev.pid + 1)
            assert path.exists()
            remove_state(path, dev.pid)
            assert not path.exists()
            assert running_setup(env) is None
        finally:
            dev.kill()


def test_a_setup_whose_process_is_gone_is_ignored(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    path = tmp_path / "dev.json"
    write_state(path, setup_of(int(gone.stdout)))
    assert running_setup({STATE_ENV: str(path)}) is None


def test_a_process_that_is_not_stocksync_is_ignored(tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "30"]) as other:
        try:
            cmdline = Path(f"/proc/{other.pid}/cmdline")
            while not cmdline.read_bytes().startswith(b"sleep"):  # until it has exec'd
                time.sleep(0.01)
            path = tmp_path / "dev.json"
            write_state(path, setup_of(other.pid))
            assert running_setup({STATE_ENV: str(path)}) is None
        finally:
            other.kill()


def test_a_folder_others_may_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(OSError, match="not a private folder"):
        write_state(folder / "dev.json", setup_of(os.getpid()))
    folder.chmod(0o1777)  # like /tmp: nobody replaces another's file
    write_state(folder / "dev.json", setup_of(os.getpid()))


def test_loader_uses_the_setup_without_connection_settings(tmp_path: Path) -> None:
    dev = setup_of(1)
    config = tmp_path / "c.toml"
    config.write_text('topic_prefix = "mine"\nredis_namespace = "shop"\npartitions = 3\n')
    settings, used = load_configuration(str(config), {}, dev)
    assert used == dev
    assert (settings.broker, settings.redis_url) == (dev.broker, dev.redis_url)
    # dev's key space and topics win: the same file gave dev its own ("shop-dev").
    assert (settings.redis_namespace, settings.topic_prefix) == ("stocksync-dev", "stocksync")
    assert settings.partitions == 3


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ('broker = "kafka-1:9092"\n', {}),
        ('redis_url = "redis://cache:6379/0"\n', {}),
        ("", {"STOCKSYNC_BROKER": "kafka-1:9092"}),
        ("", {"STOCKSYNC_REDIS_URL": "redis://cache:6379/0"}),
    ],
)
def test_loader_ignores_the_setup_given_a_broker_or_redis(
    tmp_path: Path, text: str, env: dict[str, str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    settings, used = load_configuration(str(config), env, setup_of(1))
    assert used is None
    assert settings.broker != setup_of(1).broker
