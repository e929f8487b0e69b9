"""The processes under test: ``stocksync worker`` and API replicas, restartable, with their logs."""

from __future__ import annotations

import contextlib
import ctypes
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from stocksync.daemon.services import free_port
from tests.e2e.ledger import Observed
from tests.readmodel.oracle import (
    ChannelFigures,
    NodeFigures,
)

__all__ = ["READY_TIMEOUT", "ApiReplica", "WorkerProcess", "parse_metrics"]

#: How long a worker may take to be ready (a restart waits for the dead member's session).
READY_TIMEOUT = 90.0


# --- worker processes ---------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGKILL the worker if the test process dies."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG

    return hook


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: metric name (labels dropped) -> sum over its samples."""
    sums: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        sums[name] += float(value)
    return dict(sums)


class WorkerProcess:
    """One ``stocksync worker`` subprocess, restartable; every run appends to one log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.runs = 0
        self.exit_codes: list[int] = []
        self._log_start = 0

    def start(self) -> WorkerProcess:
        """Start a new run (the previous one must have ended)."""
        assert not self.alive, f"worker {self.name} is still running"
        self.runs += 1
        self.port = None
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            log.write(f"--- run {self.runs} of worker {self.name} at "
                      f"{time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        return self

    @property
    def alive(self) -> bool:
        """Whether the current run is still running."""
        return self.proc is not None and self.proc.poll() is None

    def describe(self) -> str:
        """``name: running`` or ``name: exited N``, with the exit codes of earlier runs."""
        now = "running" if self.alive else (
            f"exited {self.proc.returncode}" if self.proc is not None else "not running")
        return f"{self.name}: {now} (earlier runs: {self.exit_codes})"

    def _reap(self) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=30)
        self.exit_codes.append(code)
        self.proc = None
        return code

    def run_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines of the current (or last) run."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            text = log.read().decode("utf-8", "replace")
        lines = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    lines.append(parsed)
        return lines

    def run_text(self) -> str:
        """The raw stderr of the current (or last) run."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode("utf-8", "replace")

    def tail(self, lines: int = 40) -> str:
        """The end of the log file, for failure messages."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> WorkerProcess:
        """Wait for the ``worker ready`` log line of this run; learn the metrics port."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.run_lines():
                if "port" in line and self.port is None:
                    self.port = int(line["port"])
                if str(line.get("msg", "")).startswith("worker ready"):
                    assert self.port is not None, "the worker logged no metrics port"
                    return self
            if not self.alive:
                code = self._reap() if self.proc is not None else None
                raise AssertionError(
                    f"worker {self.name} exited ({code}) before it was ready:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker {self.name} not ready within {timeout:.0f} s:\n{self.tail()}"
                )
            time.sleep(0.1)

    def metrics(self) -> dict[str, float]:
        """The current run's /metrics, summed per metric name."""
        assert self.port is not None, "wait_ready() first"
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return parse_metrics(response.read().decode())

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The current run's samples of metric ``name``, keyed by their sorted labels."""
        assert self.port is not None, "wait_ready() first"
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        }

    def events_seen(self) -> float:
        """Source events this run has translated, rejected or skipped."""
        m = self.metrics()
        return sum(m.get(name, 0.0) for name in (
            "stocksync_events_consumed_total",
            "stocksync_events_rejected_total",
            "stocksync_events_skipped_total",
        ))

    def wait_progress(self, skus_written: float = 1, timeout: float = 60.0) -> None:
        """Wait until this run has written at least ``skus_written`` SKUs to Redis."""
        deadline = time.monotonic() + timeout
        while self.metrics().get("stocksync_skus_written_total", 0.0) < skus_written:
            if not self.alive or time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} made no progress:\n{self.tail()}")
            time.sleep(0.05)

    def kill(self) -> int:
        """SIGKILL the current run, as a crash would; returns its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return self._reap()

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM the current run; (exit status or None if still running, seconds waited)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - started
        return self._reap(), time.monotonic() - started

    def wait_exit(self, timeout: float) -> int:
        """Wait for the current run to end by itself; its exit status."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.name} still runs after {timeout:.0f} s:\n{self.tail()}"
            ) from None
        return self._reap()

    def close(self) -> None:
        """Kill the current run if it is still going."""
        if self.proc is not None:
            if self.alive:
                self.proc.send_signal(signal.SIGKILL)
            self._reap()


class ApiReplica:
    """One ``stocksync api`` subprocess of the deployment, answering on a free port."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                env={**env, "STOCKSYNC_API_PORT": str(self.port)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )

    def readyz(self) -> tuple[int, dict[str, Any]]:
        """``/readyz``: status and body (0 and {} while nothing answers)."""
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> ApiReplica:
        """Wait until ``/readyz`` is 200."""
        deadline = time.monotonic() + timeout
        while self.readyz()[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the API replica was not ready:\n{self.tail()}")
            time.sleep(0.1)
        return self

    def query(self, skus: Sequence[str], channel: str) -> dict[str, Any]:
        """``POST /v1/availability/query`` with node detail."""
        body = json.dumps({"skus": list(skus), "channel": channel, "detail": True}).encode()
        request = urllib.request.Request(
            self.url + "/v1/availability/query", data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer

    def read_model(self, skus: Sequence[str], channels: Sequence[str]) -> Observed:
        """What this replica serves for ``skus`` on ``channels``, in the oracle's shapes."""
        seen = Observed()
        for channel in channels:
            for start in range(0, len(skus), 1000):
                for item in self.query(skus[start : start + 1000], channel)["items"]:
                    sku = item["sku"]
                    seen.versions[sku] = item["version"]
                    seen.channels[(sku, channel)] = ChannelFigures(item["available"],
                                                                   item["status"])
                    for node in item["nodes"]:
                        figures = NodeFigures(
                            on_hand=node["on_hand"], reserved=node["reserved"],
                            quarantine=node["quarantine"], safety_stock=node["safety_stock"],
                            available=node["available"],
                        )
                        shown = seen.nodes.setdefault((sku, node["node"]), figures)
                        if shown != figures:
                            seen.problems.append(f"{sku}@{node['node']}: differs between "
                                                 "channels")
        return seen

    def tail(self, lines: int = 40) -> str:
        """The end of the replica's log."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def close(self) -> None:
        """Stop the replica."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
