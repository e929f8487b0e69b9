"""Fixtures of the operator tools' tests.

- ``settings``: this test's topics on the session broker and its Redis database,
  for the dlq, rebuild, reconcile and produce commands.
- ``dev_stack`` (package): one running ``stocksync dev --no-demo``. The probe and
  the rehearsal find it the way an operator's shell would: through its state
  file, with no broker, Redis or API settings of their own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stocksync.agents.topics import ensure_topics
from stocksync.config.settings import Settings
from stocksync.daemon.services import TansuBroker, free_port
from tests.ops.helpers import run

__all__ = ["DevStack", "dev_stack", "settings"]


@pytest.fixture
def settings(broker: TansuBroker, redis_url: str, topic_prefix: str) -> Settings:
    """Settings on the session broker, this test's topics (created, 2 partitions) and database."""
    made = Settings(
        broker=broker.url,
        redis_url=redis_url,
        topic_prefix=topic_prefix,
        partitions=2,
        redis_namespace="ops",
    )
    run(ensure_topics(broker.url, made))
    return made


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@dataclass
class DevStack:
    """A running dev setup: its API's URL and how to run a command against it."""

    api_url: str
    state: Path
    log: Path

    def command(
        self, *args: str, cwd: Path, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``stocksync ARGS`` with no broker or Redis settings: it uses the dev setup."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
        env["STOCKSYNC_DEV_STATE"] = str(self.state)
        return subprocess.run(
            [sys.executable, "-m", "stocksync", *args],
            env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip


@pytest.fixture(scope="package")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """``stocksync dev --no-demo`` on its own redis-server, broker and ports."""
    folder = tmp_path_factory.mktemp("devstack")
    state = folder / "state" / "dev.json"
    env = dict(os.environ)
    env.update(
        STOCKSYNC_DEV_STATE=str(state),
        # Unreachable: dev starts a redis-server of its own instead of sharing one.
        STOCKSYNC_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        STOCKSYNC_API_PORT=str(free_port()),
        STOCKSYNC_WORKER_PORT="0",
    )
    log_path = folder / "dev.log"
    with log_path.open("w+b") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "stocksync", "dev", "--no-demo", "--quiet"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while not (
                found := re.search(r"stocksync is up\. API: (http://\S+)", log_path.read_text())
            ):
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            # With --no-demo dev is up once the API is; wait for the worker's partitions too.
            worker = json.loads(state.read_text())["worker_url"]
            while not _ready(f"{worker}/readyz"):
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            yield DevStack(found[1], state, log_path)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            finally:
                if process.poll() is None:
                    process.kill()
