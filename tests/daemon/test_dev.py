"""``stocksync dev`` end to end: its own broker and Redis, worker and API, demo data, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from stocksync.daemon.services import free_port

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_dev_runs_everything_serves_the_demo_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = dict(os.environ)
    # An unreachable configured Redis: dev must start a private redis-server instead.
    env["STOCKSYNC_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    env["STOCKSYNC_API_PORT"] = str(free_port())
    log = (tmp_path / "dev.log").open("w+b")
    dev = subprocess.Popen(
        [sys.executable, "-m", "stocksync", "dev"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        address = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and address is None:
            assert dev.poll() is None, (tmp_path / "dev.log").read_text()
            found = re.search(r"API: (http://\S+)", (tmp_path / "dev.log").read_text())
            address = found.group(1) if found else None
            time.sleep(0.3)
        assert address is not None, (tmp_path / "dev.log").read_text()
        text = (tmp_path / "dev.log").read_text()
        assert "started one at redis://" in text
        assert "curl" in text
        assert _get(f"{address}/readyz")[0] == 200

        # The demo's ERP export reaches the API: a demo SKU becomes known.
        body = b""
        while time.monotonic() < deadline:
            status, body = _get(f"{address}/v1/availability/TSHIRT-RED-M?channel=web")
            if status == 200:
                break
            time.sleep(0.5)
        answer = json.loads(body)
        assert answer["sku"] == "TSHIRT-RED-M"
        assert answer["status"] in ("in_stock", "low_stock", "out_of_stock")
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            status = dev.wait(60)
        finally:
            if dev.poll() is None:
                dev.kill()
        log.close()
    assert status == 0, (tmp_path / "dev.log").read_text()
    assert "stopped." in (tmp_path / "dev.log").read_text()
