"""``stocksync probe`` end to end: through dev's broker, worker and Redis to its API."""

from __future__ import annotations

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
from tests.ops.conftest import DevStack

pytestmark = pytest.mark.slow

_LINE = re.compile(
    r"^probe _stocksync-probe on web at dc-east: event served in (?P<event>[0-9.]+) s \(SLO 2 s\),"
    r" hold (?P<hold>[0-9.]+) s, release (?P<release>[0-9.]+) s \(SLO 1 s\): ok$"
)


def test_probe_once_times_the_event_and_a_hold_within_the_slo(
    dev_stack: DevStack, tmp_path: Path
) -> None:
    # Twice: the second probe must see its own new version, not the first one's.
    for _ in range(2):
        done = dev_stack.command("probe", "--once", cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stderr.startswith("stocksync: using the running `stocksync dev` setup")
        found = _LINE.match(done.stdout.strip())
        assert found, done.stdout
        assert 0 < float(found["event"]) < 2
        assert 0 < float(found["hold"]) < 1 and 0 < float(found["release"]) < 1
    # The probe SKU is not business stock: the model's size leaves it out.
    with urllib.request.urlopen(f"{dev_stack.api_url}/metrics", timeout=5) as answer:
        metrics = answer.read().decode()
    assert re.search(r"^stocksync_api_model_skus 0\.0$", metrics, re.M), metrics
    with urllib.request.urlopen(
        f"{dev_stack.api_url}/v1/availability/_stocksync-probe?channel=web", timeout=5
    ) as answer:
        assert answer.status == 200  # ... though the API serves it


def test_probe_past_its_slo_exits_1_and_says_why(dev_stack: DevStack, tmp_path: Path) -> None:
    done = dev_stack.command("probe", "--slo", "0.000001", "--no-holds", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(
        r"FAILED: event served in [0-9.]+ s, over its SLO of 1e-06 s$", done.stdout.strip()
    ), done.stdout
    assert "hold" not in done.stdout


def test_probe_against_no_api_fails(dev_stack: DevStack, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    done = dev_stack.command("probe", "--api", closed, cwd=tmp_path)
    assert done.returncode == 1
    assert "FAILED: the API answered nothing (connection_refused) before the probe" in done.stdout


def test_probe_every_exports_its_figures(dev_stack: DevStack, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    env["STOCKSYNC_DEV_STATE"] = str(dev_stack.state)
    process = subprocess.Popen(
        [sys.executable, "-m", "stocksync", "probe", "--every", "1s", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        runs = 0.0
        text = ""
        while runs < 2:
            assert time.monotonic() < deadline, text
            assert process.poll() is None
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as a:
                    text = a.read().decode()
            except OSError:
                continue
            found = re.search(r'^stocksync_probe_runs_total\{outcome="ok"\} ([0-9.]+)$', text, re.M)
            runs = float(found[1]) if found else 0.0
        assert re.search(r"^stocksync_probe_success 1\.0$", text, re.M), text
        seconds = re.search(r"^stocksync_probe_seconds ([0-9.e-]+)$", text, re.M)
        assert seconds and 0 < float(seconds[1]) < 2, text
        assert re.search(r'^stocksync_probe_hold_seconds\{step="release"\} [0-9.e-]+$', text, re.M)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 0
        assert f"metrics on http://127.0.0.1:{port}/metrics" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
