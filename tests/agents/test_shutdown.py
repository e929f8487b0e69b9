"""The shutdown deadline holds whatever the process is doing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

__all__: list[str] = []

_STUCK = """
import logging, time
from stocksync.daemon.logs import setup_logging
from stocksync.agents.app import exit_deadline
setup_logging("info")
exit_deadline(0.5)
exit_deadline(60)  # armed once: the first deadline holds
while True:
    time.sleep(10)  # a loop and threads that never finish stopping
"""


def test_the_exit_deadline_ends_a_stuck_process_with_a_clear_line() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _STUCK],
        capture_output=True,
        timeout=30,
        env=dict(os.environ),
        check=False,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 75, done.stderr
    assert seconds < 10
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith(b"{")]
    last = lines[-1]
    assert last["level"] == "critical"
    assert "did not stop within its shutdown timeout of 0.5 s" in last["msg"]
