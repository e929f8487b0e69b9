"""``stocksync dev`` end to end: its services, the demo, and the commands that find it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from stocksync.daemon.services import free_port

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Dev:
    """A running ``stocksync dev`` and its output so far."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path, env: dict[str, str]) -> None:
        self.process = process
        self.log = log
        self.env = env

    @property
    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, timeout: float = 90) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text)
            if found:
                return found
            assert self.process.poll() is None, self.text
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not in:\n{self.text}")

    def command(self, *args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """Another stocksync command, with no broker or Redis settings at all."""
        env = {k: v for k, v in self.env.items() if not k.startswith("STOCKSYNC_")}
        env["STOCKSYNC_DEV_STATE"] = self.env["STOCKSYNC_DEV_STATE"]
        return subprocess.run(
            [sys.executable, "-m", "stocksync", *args],
            env=env, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=90,
            check=False,
        )  # fmt: skip


@contextmanager
def dev(tmp_path: Path, *args: str, **env: str) -> Iterator[Dev]:
    full = dict(os.environ)
    full["STOCKSYNC_DEV_STATE"] = str(tmp_path / "state" / "dev.json")
    full.update(env)
    log_path = tmp_path / "dev.log"
    with log_path.open("w+b") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "stocksync", "dev", *args],
            env=full, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        running = Dev(process, log_path, full)
        try:
            yield running
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            finally:
                if process.poll() is None:
                    process.kill()


def test_dev_serves_the_demo_once_up_and_other_commands_find_it(tmp_path: Path) -> None:
    state = tmp_path / "state" / "dev.json"
    # An unreachable configured Redis: dev must start a private redis-server instead.
    with dev(
        tmp_path,
        STOCKSYNC_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        STOCKSYNC_API_PORT=str(free_port()),
    ) as running:
        address = running.wait_for(r"stocksync is up\. API: (http://\S+)")[1]
        # Up means served: the example request answers at once, no 404 for seconds.
        status, body = _get(f"{address}/v1/availability/TSHIRT-RED-M?channel=web")
        assert status == 200, body
        assert json.loads(body)["sku"] == "TSHIRT-RED-M"
        text = running.text
        assert "started one at redis://" in text
        assert text.index("demo data loaded: the API serves 200 SKUs") < text.index("is up")
        assert re.search(r"worker metrics: http://127\.0\.0\.1:\d+/metrics", text)
        assert json.loads(state.read_text())["api_url"] == address

        # A second command without settings uses dev's broker: it says so first.
        listed = running.command("dlq", "list", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert listed.stderr.startswith("stocksync: using the running `stocksync dev` setup")
        assert listed.stdout.splitlines()[-1] == "0 dead-lettered event(s)"

        # produce through dev's broker, worker and Redis to its API.
        events = tmp_path / "events.jsonl"
        snapshot = {"type": "stock.snapshot", "schema": 1, "event_id": "t-1", "source": "test",
                    "occurred_at": "2026-11-27T09:00:00Z", "sku": "NEW-SKU-1", "node": "dc-east",
                    "on_hand": 7, "as_of": "2026-11-27T09:00:00Z"}  # fmt: skip
        events.write_text(json.dumps(snapshot) + "\nnot json\n")
        produced = running.command("produce", str(events), cwd=tmp_path)
        assert produced.returncode == 1, produced.stderr  # line 2 was rejected
        assert produced.stdout.startswith("sent 1 event(s) in 1 message(s) from 2 line(s)")
        assert "  line 2: malformed_json: " in produced.stdout
        deadline = time.monotonic() + 30
        while (status := _get(f"{address}/v1/availability/NEW-SKU-1?channel=web")[0]) != 200:
            assert time.monotonic() < deadline, status
            time.sleep(0.3)

        # reconcile reads dev's key space, not the configured one: no drift, exit 0.
        counts = tmp_path / "counts.csv"
        counts.write_text("sku,node,on_hand,as_of\nNEW-SKU-1,dc-east,7,2026-11-27T09:00:00Z\n")
        reconciled = running.command("reconcile", str(counts), cwd=tmp_path)
        assert reconciled.returncode == 0, reconciled.stderr + reconciled.stdout

        line = running.wait_for(r"status: (\d+) events/s, (\d+) SKUs, \d+ dead letters", 20)
        assert int(line[2]) >= 200
        data = Path(running.wait_for(r"logs in (\S+)\n")[1])
        running.process.send_signal(signal.SIGINT)
        assert running.process.wait(60) == 0, running.text
    assert "stopped." in running.text
    assert '"level":"error"' not in running.text  # e.g. an unclosed producer
    assert not state.exists()
    assert not data.exists()


def test_dev_on_a_reachable_redis_says_why_it_moved_and_cleans_its_keys(
    tmp_path: Path, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("other:key", "kept")
    config = tmp_path / "stocksync.toml"
    config.write_text('[dlq.owners]\n"billing-*" = "finance"\n"wms-*" = "warehouse"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with dev(
            tmp_path,
            "--no-demo",
            "--quiet",
            STOCKSYNC_REDIS_URL=redis_url,
            STOCKSYNC_API_PORT=str(busy),
            STOCKSYNC_REDIS_NAMESPACE="shop",
            STOCKSYNC_CONFIG=str(config),
        ) as running:
            address = running.wait_for(r"stocksync is up\. API: (http://\S+)")[1]
            # Up means the worker has its partitions too: what is sent now is applied now.
            worker_url = json.loads((tmp_path / "state" / "dev.json").read_text())["worker_url"]
            assert _get(f"{worker_url}/readyz")[0] == 200
            text = running.text
            assert f"api: port {busy} on 127.0.0.1 is taken (another program listens there)" in text
            assert f"the configured Redis at {redis_url} answers; using it, keys shop-dev:*" in text

            # Nothing was fed: reconcile finds dev's key space empty and says so.
            counts = tmp_path / "counts.csv"
            counts.write_text("sku,node,on_hand,as_of\nA-1,dc-east,7,2026-11-27T09:00:00Z\n")
            reconciled = running.command("reconcile", str(counts), cwd=tmp_path)
            assert reconciled.returncode == 1
            assert "the read model holds no SKU at all" in reconciled.stderr
            assert "keys shop-dev:*" in reconciled.stderr

            snapshot = {"type": "stock.snapshot", "schema": 1, "event_id": "t-1", "source": "t",
                        "occurred_at": "2026-11-27T09:00:00Z", "sku": "A-1", "node": "dc-east",
                        "on_hand": 7, "as_of": "2026-11-27T09:00:00Z"}  # fmt: skip
            produced = running.command("produce", "-", cwd=tmp_path, stdin=json.dumps(snapshot))
            assert produced.returncode == 0, produced.stderr
            deadline = time.monotonic() + 30
            while _get(f"{address}/v1/availability/A-1?channel=web")[0] != 200:
                assert time.monotonic() < deadline
                time.sleep(0.3)
            assert list(client.scan_iter("shop-dev:*"))

            # Events the worker rejects are owned by their source's team, else their topic's.
            cancels = [{"type": "order.cancelled", "schema": 1, "event_id": f"c-{source}",
                        "occurred_at": "2026-11-27T09:00:00Z", "source": source,
                        "order_id": f"unknown-{source}"} for source in ("billing-7", "shop")]
            produced = running.command("produce", "-", cwd=tmp_path,
                                       stdin="\n".join(json.dumps(c) for c in cancels))
            assert produced.returncode == 0, produced.stderr
            deadline = time.monotonic() + 30
            while True:
                listed = running.command("dlq", "list", "--show-body", cwd=tmp_path)
                assert listed.returncode == 0, listed.stderr
                if listed.stdout.splitlines()[-1] == "2 dead-lettered event(s)":
                    break
                assert time.monotonic() < deadline, listed.stdout
                time.sleep(0.5)
            finance = running.command("dlq", "list", "--owner", "finance", "--show-body",
                                      cwd=tmp_path)
            lines = finance.stdout.splitlines()
            assert lines[-1] == "1 dead-lettered event(s) owned by 'finance'", finance.stdout
            assert "  unknown_order  owner=finance  stocksync.orders.v1[" in lines[0]
            assert lines[1].startswith('    body: {"type": "order.cancelled", "schema": 1,')
            assert '"source": "billing-7"' in lines[1]
            commerce = running.command("dlq", "list", "--owner", "commerce", cwd=tmp_path)
            assert commerce.stdout.splitlines()[-1] == (
                "1 dead-lettered event(s) owned by 'commerce'"
            )
            worker_metrics = _get(f"{worker_url}/metrics")[1].decode()
            for owner in ("finance", "commerce"):
                assert (f'stocksync_dead_letters_total{{owner="{owner}",reason="unknown_order"}}'
                        " 1.0") in worker_metrics
            replayed = running.command("dlq", "replay", "--owner", "finance", "--dry-run",
                                       cwd=tmp_path)
            assert "would send 1 of 1 matching dead-lettered event(s)" in replayed.stdout

            running.process.send_signal(signal.SIGTERM)
            assert running.process.wait(60) == 0, running.text
    assert "status:" not in running.text
    assert re.search(r"removed \d+ keys shop-dev:\* from ", running.text)
    assert list(client.scan_iter("shop-dev:*")) == []
    assert client.get("other:key") == b"kept"
    client.close()
