"""The availability feed end to end: real broker, redis-server, worker, API and feed processes.

Channel ``web`` is notified on quantity (coalesced over 300 ms), ``store`` on
status. The latest message per (sku, channel) must equal what the API serves
and what the reference model says, across SIGKILLs of the feed and of the
worker and failovers between two feed processes; versions never go back per
SKU; a webhook receiver (aiohttp, here) that fails its first deliveries gets
the same latest figures, every signature valid.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import random
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from stocksync.daemon.services import RedisServer, free_port
from tests.e2e.events import Channel, realistic_stream, single
from tests.e2e.harness import Cluster, _LoopThread, redis_options
from tests.e2e.processes import WorkerProcess

__all__: list[str] = []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

SECRET = "whsec-test-0123456789"
CHANNELS = (
    Channel("web", ("dc-east", "dc-west"), buffer=1, low_stock_threshold=5,
            notify="quantity", notify_min_interval_ms=300),
    Channel("store", ("store-1", "dc-east"), low_stock_threshold=2, notify="status",
            notify_min_interval_ms=0),
)


class FeedProcess(WorkerProcess):
    """One ``stocksync feed`` subprocess (restartable), its /readyz and role."""

    def wait_ready(self, timeout: float = 60.0) -> FeedProcess:
        """Wait for the ``feed ready`` line of this run; learn the health port."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.run_lines():
                if "port" in line and self.port is None:
                    self.port = int(line["port"])
                if str(line.get("msg", "")).startswith("feed ready") and self.port:
                    return self
            if not self.alive or time.monotonic() > deadline:
                raise AssertionError(f"feed {self.name} not ready:\n{self.tail()}")
            time.sleep(0.1)

    def role(self) -> str | None:
        """``active``/``standby`` from /readyz, None while not ready."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return str(json.loads(r.read())["role"])
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            return None

    def wait_role(self, role: str, timeout: float = 30.0) -> float:
        """Wait until /readyz says ``role``; the seconds it took."""
        started = time.monotonic()
        while self.role() != role:
            if not self.alive or time.monotonic() - started > timeout:
                raise AssertionError(f"feed {self.name} is not {role}:\n{self.tail()}")
            time.sleep(0.1)
        return time.monotonic() - started


def start_feed(cluster: Cluster, name: str) -> FeedProcess:
    command = [sys.executable, "-m", "stocksync", "--config", str(cluster.config_path), "feed"]
    feed = FeedProcess(name, command, cluster.worker_env(STOCKSYNC_FEED_PORT="0"),
                       cluster.workdir / f"feed-{name}.log")
    cluster.workers[f"feed-{name}"] = feed  # killed at the end, shown on failure
    return feed.start().wait_ready()


@dataclass
class Receiver:
    """A webhook endpoint: fails its first ``fail_first`` POSTs, then records and checks them."""

    fail_first: int = 0
    always_fail: bool = False
    calls: int = 0
    failed: int = 0
    bad_signatures: int = 0
    largest: int = 0
    deliveries: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls += 1
        stamp = request.headers["X-Stocksync-Timestamp"]
        want = "sha256=" + hmac.new(SECRET.encode(), f"{stamp}.".encode() + body,
                                    hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, request.headers["X-Stocksync-Signature"]):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.always_fail or self.calls <= self.fail_first:
            self.failed += 1
            return web.Response(status=503)
        messages = json.loads(body)
        self.largest = max(self.largest, len(messages))
        self.deliveries.append((request.headers["X-Stocksync-Delivery"], messages))
        return web.Response(status=204)

    def messages(self) -> list[dict[str, Any]]:
        return [m for _, batch in self.deliveries for m in batch]


def serve_receiver(io: _LoopThread, receiver: Receiver) -> tuple[str, Callable[[], None]]:
    """Serve ``receiver`` on a free port in ``io``'s loop; its URL and a stop function."""
    port = free_port()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    io.run(start())
    return f"http://127.0.0.1:{port}/hook", lambda: io.run(runner.cleanup())


def webhook_config(tmp: Path, url: str, *, max_attempts: int = 30) -> str:
    secret = tmp / "hook-secret"
    secret.write_text(SECRET + "\n")
    return "\n".join([
        "[feed]",
        "lease_seconds = 5",
        "retry_base_ms = 100",
        "retry_max_ms = 400",
        "",
        "[[feed.webhooks]]",
        'name = "market"',
        f'url = "{url}"',
        f'secret_file = "{secret}"',
        f"max_attempts = {max_attempts}",
    ])


Found = list[tuple[int, int, dict[str, Any]]]
Served = dict[tuple[str, str], tuple[int, str, int]]


def read_feed(cluster: Cluster, io: _LoopThread, idle: float = 1.5) -> Found:
    """Every message on the feed topic: (partition, offset, message), in offset order."""
    topic = f"{cluster.prefix}.availability.v1"

    async def read() -> Found:
        consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            assigned = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            found: Found = []
            quiet = time.monotonic()
            while time.monotonic() - quiet < idle:
                batches = await consumer.getmany(timeout_ms=200)
                for tp, records in batches.items():
                    for r in records:
                        found.append((tp.partition, r.offset, json.loads(r.value or b"")))
                        assert r.key == found[-1][2]["sku"].encode()
                if batches:
                    quiet = time.monotonic()
            return found
        finally:
            await consumer.stop()

    return io.run(read())


def latest(messages: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The highest-version message per (sku, channel), as a consumer keeps them."""
    kept: dict[tuple[str, str], dict[str, Any]] = {}
    for m in messages:
        key = (m["sku"], m["channel"])
        if key not in kept or m["version"] > kept[key]["version"]:
            kept[key] = m
    return kept


def served_figures(cluster: Cluster, skus: list[str]) -> Served:
    api = cluster.apis[0]
    out = {}
    for channel in ("web", "store"):
        for item in api.query(skus, channel)["items"]:
            out[(item["sku"], channel)] = (item["available"], item["status"], item["version"])
    return out


def differences(
    kept: dict[tuple[str, str], dict[str, Any]],
    served: Served,
) -> list[str]:
    """Where the latest messages differ from what is served, in what each channel notifies."""
    out = []
    for key, (available, status, _version) in sorted(served.items()):
        message = kept.get(key)
        if message is None:
            out.append(f"{key}: no message, served {available} {status}")
        elif key[1] == "web" and message["available"] != available:
            out.append(f"{key}: message says {message['available']}, served {available}")
        elif message["status"] != status:
            out.append(f"{key}: message says {message['status']}, served {status}")
    return out


def wait_converged(
    what: str, read: Callable[[], list[dict[str, Any]]],
    served: Served, timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Read until the latest messages equal ``served`` (or fail showing the differences)."""
    deadline = time.monotonic() + timeout
    while True:
        messages = read()
        diff = differences(latest(messages), served)
        if not diff:
            return messages
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not converge:\n" + "\n".join(diff[:30]))
        time.sleep(1.0)


@pytest.mark.parametrize("redis_kind", ["redis", "redis-cluster"])
def test_latest_feed_message_equals_the_api_across_kills_and_failovers(
    make_cluster: Callable[..., Cluster], tmp_path: Path, request: pytest.FixtureRequest,
    redis_kind: str,
) -> None:
    """On one Redis and on a three-master Redis Cluster (a change stream and a copy of the
    lease per shard of the model)."""
    io = _LoopThread()
    receiver = Receiver(fail_first=4)
    url, stop_receiver = serve_receiver(io, receiver)
    cluster = make_cluster(channels=CHANNELS, extra_config=webhook_config(tmp_path, url),
                           **redis_options(request, redis_kind))
    try:
        rng = random.Random(cluster.seed())
        worker = cluster.start_worker()
        api = cluster.start_api()
        first = start_feed(cluster, "f1")
        first.wait_role("active")
        second = start_feed(cluster, "f2")
        assert second.wait_role("standby") >= 0
        stream = realistic_stream(rng, cluster.wire, 2500, skus=40)
        sending = cluster.send_paced(stream, 12.0)

        time.sleep(2.5)
        first.kill()  # the active feed dies mid-stream
        took = second.wait_role("active", timeout=15)
        cluster.note(f"f2 took over in {took:.1f} s")
        assert took <= 10.0, f"the standby took {took:.1f} s to take over"
        first.start().wait_ready()

        time.sleep(2.0)
        worker.kill()  # and the worker
        worker.start().wait_ready()

        time.sleep(1.0)
        second.kill()  # the second active feed too: f1 takes over
        took = first.wait_role("active", timeout=15)
        cluster.note(f"f1 took over in {took:.1f} s")
        assert took <= 10.0, f"the standby took {took:.1f} s to take over"

        sending.result(120)
        cluster.settle()
        reference = cluster.check_model()
        api.wait_ready()
        cluster.check_api(api, reference)
        skus = sorted({sku for sku, _ in reference.model.channels})
        served = served_figures(cluster, skus)
        # The reference (no holds here) says the same as the API.
        for (sku, channel), figures in reference.model.channels.items():
            assert served[(sku, channel)][:2] == (figures.available, figures.status)

        found: Found = []

        def read_topic() -> list[dict[str, Any]]:
            found[:] = read_feed(cluster, io)
            return [m for _, _, m in found]

        messages = wait_converged("the Kafka feed", read_topic, served)
        versions_never_go_back(found)
        # Each message's figures were served at its version: event_id and schema as contracted.
        for m in messages:
            assert m["type"] == "availability.changed" and m["schema"] == 1
            assert m["event_id"] == f"av-{m['sku']}-{m['channel']}-{m['version']}"
        # Nothing was sent for a (sku, channel) whose notified figure did not change, except
        # that each SIGKILL of the active feed may repeat one round's (in flight when it died).
        runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for m in messages:
            runs[(m["sku"], m["channel"])].append(m)
        repeats = []
        for key, sequence in runs.items():
            ordered = sorted({m["event_id"]: m for m in sequence}.values(),
                             key=lambda m: m["version"])
            notified = "available" if key[1] == "web" else "status"
            for before, after in itertools.pairwise(ordered):
                if before[notified] == after[notified]:
                    repeats.append(f"{key}: {before} -> {after}")
        assert len(repeats) <= 2 * 40, "\n".join(repeats)
        cluster.note(f"{len(repeats)} messages repeated a figure after a kill")

        # The flaky webhook got the same latest figures, every signature valid.
        wait_converged("the webhook", receiver.messages, served)
        assert receiver.bad_signatures == 0
        assert receiver.failed >= 4
        assert receiver.largest <= 100
        first_seen: dict[str, list[int]] = defaultdict(list)
        seen_ids: set[str] = set()
        for m in receiver.messages():
            if m["event_id"] not in seen_ids:
                seen_ids.add(m["event_id"])
                first_seen[m["sku"]].append(m["version"])
        for sku, versions in first_seen.items():
            assert versions == sorted(versions), f"webhook: {sku} out of order: {versions}"
    finally:
        stop_receiver()
        io.close()


def versions_never_go_back(found: Found) -> None:
    """Per SKU (one partition each), read in offset order, versions never go back."""
    by_sku: dict[str, list[int]] = defaultdict(list)
    for _, _, m in sorted(found, key=lambda x: (x[0], x[1])):
        by_sku[m["sku"]].append(m["version"])
    for sku, versions in by_sku.items():
        assert versions == sorted(versions), f"{sku}: versions went back: {versions}"


def converge(cluster: Cluster, io: _LoopThread, what: str) -> Found:
    """Settle, check Redis and the API against the reference, wait until the feed says the
    same; every message read, with versions checked never to go back."""
    cluster.settle()
    reference = cluster.check_model()
    api = cluster.apis[0]
    api.wait_ready()
    cluster.check_api(api, reference)
    skus = sorted({sku for sku, _ in reference.model.channels})
    served = served_figures(cluster, skus)
    for (sku, channel), figures in reference.model.channels.items():
        assert served[(sku, channel)][:2] == (figures.available, figures.status)
    found: Found = []

    def read_topic() -> list[dict[str, Any]]:
        found[:] = read_feed(cluster, io)
        return [m for _, _, m in found]

    kept = latest(wait_converged(what, read_topic, served))
    versions_never_go_back(found)
    # A consumer is never ahead of the API: the version it keeps is one the API reached.
    ahead = [f"{key}: message v{m['version']}, served v{served[key][2]}"
             for key, m in kept.items() if key in served and m["version"] > served[key][2]]
    assert not ahead, "\n".join(ahead[:20])
    return found


def wait_logged(process: WorkerProcess, text: str, timeout: float = 60.0) -> None:
    """Wait until a log line of ``process``'s current run contains ``text``."""
    deadline = time.monotonic() + timeout
    while not any(text in str(line.get("msg", "")) for line in process.run_lines()):
        if not process.alive or time.monotonic() > deadline:
            raise AssertionError(f"{process.name} never logged {text!r}:\n{process.tail()}")
        time.sleep(0.2)


def test_the_feed_converges_across_a_rebuild_without_repeating_itself(
    make_cluster: Callable[..., Cluster],
) -> None:
    """`stocksync rebuild` switches the model under a running feed: versions jump ahead, the
    figures stay, so nothing is sent; afterwards the feed follows the rebuilt model."""
    io = _LoopThread()
    cluster = make_cluster(channels=CHANNELS)
    try:
        rng = random.Random(cluster.seed())
        messages = realistic_stream(rng, cluster.wire, 1600, skus=40)
        half = len(messages) // 2
        worker = cluster.start_worker()
        cluster.start_api()
        feed = start_feed(cluster, "f1")
        feed.wait_role("active")
        cluster.send(messages[:half])
        before = converge(cluster, io, "the feed before the rebuild")

        code, _ = worker.terminate(30)
        assert code == 0, worker.tail()
        done = cluster.rebuild("--yes")
        assert done.returncode == 0, done.stderr
        generation = cluster.namespace().rsplit(":", 1)[-1]
        wait_logged(feed, f"(generation {generation})")
        time.sleep(1.0)  # past the web channel's interval
        after = read_feed(cluster, io)
        # The rebuild changed no figure: no message (the contract's "only when it changed").
        assert len(after) == len(before), [m for _, _, m in after[len(before):]][:20]

        worker.start().wait_ready()
        cluster.send(messages[half:])
        converge(cluster, io, "the feed after the rebuild")
    finally:
        io.close()


def test_the_feed_converges_after_redis_restarted_empty(
    make_cluster: Callable[..., Cluster], tmp_path: Path,
) -> None:
    """Redis (no persistence) restarts empty mid-stream: the published records, the lease and
    the webhook positions are gone with the model. The worker rebuilds the model with
    versions above the old ones, the active feed sees its lease lapsed, loads its (empty)
    state again and sends every (sku, channel) its current figure once, then follows."""
    volatile = RedisServer(data_dir=tmp_path / "volatile-redis", persistent=False)
    volatile.start()
    io = _LoopThread()
    try:
        cluster = make_cluster(channels=CHANNELS, redis_url=volatile.url_for(0))
        rng = random.Random(cluster.seed())
        messages = realistic_stream(rng, cluster.wire, 2000, skus=40)
        first, rest = messages[:1400], messages[1400:]
        worker = cluster.start_worker()
        cluster.start_api().wait_ready()
        feed = start_feed(cluster, "f1")
        feed.wait_role("active")
        standby = start_feed(cluster, "f2")
        standby.wait_role("standby")
        stream = cluster.send_paced(first, 12.0)
        worker.wait_progress(skus_written=30)
        # Late in the stream: the rebuilt model (few, large batches) and what follows would
        # not bring the versions back up to the old ones by themselves.
        time.sleep(7.0)
        assert not stream.done(), "the stream ended before Redis restarted; slow it down"
        volatile.stop()
        volatile.start()
        cluster.note("Redis restarted empty")
        stream.result(timeout=120)
        found = converge(cluster, io, "the feed after Redis restarted empty")
        lines = [str(line.get("msg", "")) for f in (feed, standby) for line in f.run_lines()]
        assert any("lapsed" in line or "standing by" in line for line in lines), feed.tail()
        # Versions went on above the old ones: the latest message is the one a consumer keeps.
        assert max(m["version"] for _, _, m in found) > 1_700_000_000_000

        cluster.send(rest)
        converge(cluster, io, "the feed after the rest of the stream")
    finally:
        io.close()
        volatile.stop()


def test_coalescing_flapping_and_holds(
    make_cluster: Callable[..., Cluster], tmp_path: Path,
) -> None:
    io = _LoopThread()
    channels = (
        Channel("web", ("dc-east",), low_stock_threshold=5, notify="quantity",
                notify_min_interval_ms=2000),
        Channel("store", ("dc-east",), notify="off"),
    )
    cluster = make_cluster(channels=channels, node_safety={})
    try:
        cluster.start_worker()
        api = cluster.start_api()
        feed = start_feed(cluster, "f1")
        feed.wait_role("active")
        w = cluster.wire
        sku = "FLAP-1"

        def web_messages() -> list[dict[str, Any]]:
            return [m for _, _, m in read_feed(cluster, io, idle=0.5)
                    if m["sku"] == sku and m["channel"] == "web"]

        cluster.send([single(w.snapshot(sku, "dc-east", 10, 1))])
        deadline = time.monotonic() + 30
        while not web_messages():
            assert time.monotonic() < deadline, feed.tail()
            time.sleep(0.3)
        time.sleep(2.5)  # past the interval of the first message
        assert [m["available"] for m in web_messages()] == [10]
        assert all(m["channel"] == "web" for _, _, m in read_feed(cluster, io, idle=0.5))  # off

        # 10 -> 7 -> 10 inside one interval: nothing.
        cluster.send([single(w.adjusted(sku, "dc-east", -3, 2))])
        cluster.send([single(w.adjusted(sku, "dc-east", 3, 3))])
        time.sleep(3.0)
        assert [m["available"] for m in web_messages()] == [10]

        # Three changes inside one interval: one message, the latest figures, after the interval.
        sent_at = time.time()
        for minute in (4, 5, 6):
            event = w.adjusted(sku, "dc-east", -1, minute) | {"correlation_id": f"c-{minute}"}
            cluster.send([single(event)])
        time.sleep(3.0)
        got = web_messages()
        assert [m["available"] for m in got] == [10, 7], got
        assert got[-1]["previous_status"] == "in_stock"
        assert got[-1]["status"] == "in_stock"
        assert got[-1]["correlation_id"] == "c-6"  # of the event that made the last change
        assert "correlation_id" not in got[0]
        cluster.note(f"coalesced message {time.time() - sent_at:.1f} s after the first change")

        # A hold taken through the API is part of the figure; its expiry is news too.
        body = json.dumps({"hold_id": "h-1", "channel": "web",
                           "lines": [{"sku": sku, "qty": 4}], "ttl_seconds": 3}).encode()
        request = urllib.request.Request(api.url + "/v1/holds", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status in (200, 201)
        time.sleep(2.5)
        got = web_messages()
        assert [m["available"] for m in got] == [10, 7, 3], got
        assert got[-1]["status"] == "low_stock"
        time.sleep(3.5)  # the hold expires; nothing else happens
        got = web_messages()
        assert [m["available"] for m in got] == [10, 7, 3, 7], got
        versions = [m["version"] for m in got]
        assert versions == sorted(versions)
    finally:
        io.close()


def test_dead_letters_and_replay(make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    io = _LoopThread()
    receiver = Receiver(always_fail=True)
    url, stop_receiver = serve_receiver(io, receiver)
    cluster = make_cluster(
        channels=CHANNELS, extra_config=webhook_config(tmp_path, url, max_attempts=3)
    )
    try:
        cluster.start_worker()
        cluster.start_api()
        feed = start_feed(cluster, "f1")
        feed.wait_role("active")
        w = cluster.wire
        cluster.send([single(w.snapshot("DLQ-1", "dc-east", 9, 1)),
                      single(w.snapshot("DLQ-2", "store-1", 1, 1))])
        def replay(*args: str) -> str:
            done = cluster_command(cluster, "feed", "replay", *args)
            assert done.returncode == 0, done.stdout + done.stderr
            return str(done.stdout)

        deadline = time.monotonic() + 60
        while "would replay" not in (listed := replay("--dry-run", "--webhook", "market")):
            assert time.monotonic() < deadline, feed.tail()
            time.sleep(1.0)
        assert "HTTP 503" in listed
        assert receiver.bad_signatures == 0 and receiver.failed >= 3
        assert feed.metrics().get("stocksync_webhook_deliveries_total", 0) >= 3

        assert receiver.deliveries == []
        receiver.always_fail = False
        deadline = time.monotonic() + 30
        while not {m["sku"] for m in receiver.messages()} >= {"DLQ-1", "DLQ-2"}:
            if time.monotonic() > deadline:
                raise AssertionError(f"replay delivered {receiver.messages()}")
            out = replay("--since", "10m")
            assert "replayed" in out
        assert receiver.bad_signatures == 0
        skus = {m["sku"] for m in receiver.messages()}
        assert {"DLQ-1", "DLQ-2"} <= skus
    finally:
        stop_receiver()
        io.close()


def cluster_command(cluster: Cluster, *args: str) -> Any:
    import subprocess

    command = [sys.executable, "-m", "stocksync", "--config", str(cluster.config_path), *args]
    return subprocess.run(command, env=cluster.worker_env(), capture_output=True, text=True,
                          timeout=120, check=False)

