"""The deployment under test: a config file, worker processes, a producer and read-outs.

:class:`Cluster` is one deployment under test: a config file, worker
processes, a producer, and read-outs of Redis and of the dead-letter topic.
:meth:`Cluster.settle` sends a sentinel through every (source partition,
effects partition) pair and waits until each one reached Redis and the
versions stop changing: by then everything sent before was applied.

Events come from :mod:`tests.e2e.events`, the reference from
:mod:`tests.e2e.ledger`, the processes from :mod:`tests.e2e.processes`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import os
import random
import string
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stocksync.agents.topics import effects_partition
from stocksync.codecs.projections import Served
from stocksync.readmodel.core import ChannelSpec, Topology
from stocksync.store import RedisStore
from stocksync.store.layout import Keys
from stocksync.store.served import decode_detail, decode_served
from tests.e2e.events import CHANNELS, NODE_SAFETY, T0, Channel, Msg, Wire, bulk, single
from tests.e2e.ledger import DeadLetterSeen, Landed, Ledger, Observed, Reference, diff_models
from tests.e2e.processes import ApiReplica, WorkerProcess
from tests.readmodel.oracle import ChannelFigures, NodeFigures

__all__ = ["Cluster", "redis_options"]

_T = TypeVar("_T")


# --- the deployment under test ------------------------------------------------------------


class _LoopThread:
    """An asyncio loop in a thread: the producer lives there while the test drives processes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="e2e-kafka", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Start ``coro`` on the loop; returns at once."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 120.0) -> _T:
        """Run ``coro`` on the loop and wait for its result."""
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        """Cancel what still runs, stop the loop and its thread."""

        async def cancel_the_rest() -> None:
            current = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not current]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_the_rest(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def redis_options(request: pytest.FixtureRequest, kind: str) -> dict[str, Any]:
    """Options of :class:`Cluster` for ``kind`` "redis" (the test's database) or
    "redis-cluster" (the session's three-master cluster, flushed)."""
    if kind == "redis":
        return {}
    return {"redis_url": request.getfixturevalue("redis_cluster_url"), "redis_cluster": True}


class Cluster:
    """One deployment of a test: config, workers, producer, and read-outs of Redis and the DLQ."""

    def __init__(
        self,
        *,
        bootstrap: str,
        broker_url: str,
        redis_url: str,
        prefix: str,
        workdir: Path,
        partitions: int = 4,
        shutdown_timeout: float = 10.0,
        channels: Sequence[Channel] = CHANNELS,
        node_safety: dict[str, int] | None = None,
        batch_size: int | None = None,
        extra_config: str = "",
        redis_cluster: bool = False,
    ) -> None:
        self.extra_config = extra_config
        self.bootstrap = bootstrap
        #: ``redis_url`` names a node of a Redis Cluster.
        self.redis_cluster = redis_cluster
        self.batch_size = batch_size
        self.broker_url = broker_url
        self.redis_url = redis_url
        self.prefix = prefix
        self.workdir = workdir
        self.partitions = partitions
        self.shutdown_timeout = shutdown_timeout
        self.channels = tuple(channels)
        self.node_safety = dict(NODE_SAFETY if node_safety is None else node_safety)
        self.group_id = f"{prefix}-group"
        self.topics = {
            "stock": f"{prefix}.stock.v1",
            "orders": f"{prefix}.orders.v1",
            "returns": f"{prefix}.returns.v1",
            "effects": f"{prefix}.effects.v1",
            "dlq": f"{prefix}.dlq",
        }
        self.topology = Topology(
            channels=tuple(
                ChannelSpec(name=c.name, nodes=c.nodes, buffer=c.buffer,
                            low_stock_threshold=c.low_stock_threshold)
                for c in self.channels
            ),
            safety_defaults=dict(self.node_safety),
        )
        self.config_path = workdir / "stocksync.toml"
        self.config_path.write_text(self._config_text(), encoding="utf-8")
        self.ledger = Ledger(self.topology)
        self.wire = Wire()
        self.workers: dict[str, WorkerProcess] = {}
        self.apis: list[ApiReplica] = []
        #: Facts shown when a test fails (seeds, what happened when).
        self.notes: list[str] = []
        self._io = _LoopThread()
        self._producer: AIOKafkaProducer | None = None
        self._redis: redis.Redis | redis.RedisCluster = (
            redis.RedisCluster.from_url(redis_url) if redis_cluster
            else redis.Redis.from_url(redis_url)
        )
        # The model is read through the store, as the API reads it (in the I/O thread's loop).
        self._store = RedisStore.from_url(redis_url, Keys(prefix), cluster=redis_cluster)
        self._rounds = itertools.count(1)

    # -- configuration and processes ----------------------------------------------------

    def _config_text(self) -> str:
        lines = [
            f"partitions = {self.partitions}",
            "",
            "[worker]",
            f'group_id = "{self.group_id}"',
            f"shutdown_timeout = {self.shutdown_timeout}",
        ]
        if self.batch_size is not None:
            lines.append(f"batch_size = {self.batch_size}")
        for channel in self.channels:
            nodes = ", ".join(f'"{n}"' for n in channel.nodes)
            lines += [
                "",
                "[[channels]]",
                f'name = "{channel.name}"',
                f"nodes = [{nodes}]",
                f"buffer = {channel.buffer}",
                f"low_stock_threshold = {channel.low_stock_threshold}",
            ]
            if channel.notify is not None:
                lines.append(f'notify = "{channel.notify}"')
            if channel.notify_min_interval_ms is not None:
                lines.append(f"notify_min_interval_ms = {channel.notify_min_interval_ms}")
        for node, safety in self.node_safety.items():
            lines += ["", f"[nodes.{node}]", f"safety_stock = {safety}"]
        if self.extra_config:
            lines += ["", self.extra_config]
        return "\n".join(lines) + "\n"

    def worker_env(self, **overrides: str) -> dict[str, str]:
        """The environment of a worker: only our STOCKSYNC_* variables, port 0."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
        env.update(
            STOCKSYNC_BROKER=self.broker_url,
            STOCKSYNC_REDIS_URL=self.redis_url,
            STOCKSYNC_TOPIC_PREFIX=self.prefix,
            STOCKSYNC_WORKER_PORT="0",
        )
        if self.redis_cluster:
            env["STOCKSYNC_REDIS_CLUSTER"] = "1"
        env.update(overrides)
        return env

    def worker(self, name: str = "w1", **env: str) -> WorkerProcess:
        """A worker process of this deployment (not started); ``env`` overrides variables."""
        assert name not in self.workers, f"worker {name} exists"
        command = [sys.executable, "-m", "stocksync", "--config", str(self.config_path), "worker"]
        found = self.workers[name] = WorkerProcess(
            name, command, self.worker_env(**env), self.workdir / f"worker-{name}.log"
        )
        return found

    def start_api(self) -> ApiReplica:
        """Start one ``stocksync api`` replica of this deployment (not waited for)."""
        command = [sys.executable, "-m", "stocksync", "--config", str(self.config_path), "api"]
        replica = ApiReplica(command, self.worker_env(),
                             self.workdir / f"api-{len(self.apis) + 1}.log")
        self.apis.append(replica)
        return replica

    def rebuild(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``stocksync rebuild ARGS`` with this deployment's configuration."""
        command = [sys.executable, "-m", "stocksync", "--config", str(self.config_path),
                   "rebuild", *args]
        done = subprocess.run(command, env=self.worker_env(), capture_output=True, text=True,
                              timeout=180, check=False)
        self.note(f"rebuild {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def check_api(self, replica: ApiReplica, reference: Reference) -> None:
        """Assert ``replica`` serves exactly the reference model."""
        skus = sorted({sku for sku, _ in reference.model.channels})
        observed = replica.read_model(skus, [c.name for c in self.channels])
        differences = diff_models(reference.model, observed)
        assert not differences, (
            "the API replica differs from the reference model:\n" + "\n".join(differences)
        )

    def start_worker(self, name: str = "w1") -> WorkerProcess:
        """Start a worker and wait until it has its partitions."""
        return self.worker(name).start().wait_ready()

    def start_workers(self, n: int) -> list[WorkerProcess]:
        """Start ``n`` workers of the group, named ``a``, ``b``, ..., all at once (so they
        join the group together), then wait until each has its partitions."""
        started = [self.worker(name).start() for name in string.ascii_lowercase[:n]]
        for worker in started:
            worker.wait_ready()
        return started

    def note(self, text: str) -> None:
        """Remember a fact to show if the test fails."""
        self.notes.append(text)

    def seed(self) -> int:
        """A random seed for this test (``STOCKSYNC_E2E_SEED`` replays one), noted for failures."""
        given = os.environ.get("STOCKSYNC_E2E_SEED")
        value = int(given) if given else random.randrange(2**32)
        self.note(f"seed = {value} (replay with STOCKSYNC_E2E_SEED={value})")
        return value

    def diagnostics(self) -> list[tuple[str, str]]:
        """Sections for a failure report: notes and each worker's log tail."""
        sections = []
        if self.notes:
            sections.append(("e2e notes", "\n".join(self.notes)))
        for worker in self.workers.values():
            sections.append((
                f"worker {worker.describe()}, log {worker.log_path}",
                worker.tail(80),
            ))
        for replica in self.apis:
            sections.append((f"API replica, log {replica.log_path}", replica.tail(40)))
        return sections

    def close(self) -> None:
        """Stop every worker, the producer and the clients."""
        for worker in self.workers.values():
            worker.close()
        for replica in self.apis:
            replica.close()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._io.run(self._producer.stop(), timeout=30)
        with contextlib.suppress(Exception):
            self._io.run(self._store.close(), timeout=10)
        self._io.close()
        self._redis.close()

    # -- producing ----------------------------------------------------------------------

    async def _started_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            # Producers may send messages far larger than aiokafka's 1 MiB default; the poison
            # tests send 10 MB (the embedded broker takes it without a topic setting).
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, linger_ms=5, max_request_size=16 * 1024 * 1024
            )
            await producer.start()
            self._producer = producer
        return self._producer

    async def _send(self, messages: Sequence[Msg], pause_every: int, pause: float) -> int:
        producer = await self._started_producer()
        futures = []
        for number, msg in enumerate(messages, 1):
            futures.append(await producer.send(
                self.topics[msg.kind],
                key=None if msg.key is None else msg.key.encode(),
                value=msg.value,
                partition=msg.partition,
                headers=list(msg.headers) or None,
            ))
            if pause_every and number % pause_every == 0:
                await asyncio.sleep(pause)
        delivered = await asyncio.gather(*futures)
        self.ledger.extend(
            Landed(msg, meta.topic, meta.partition, meta.offset)
            for msg, meta in zip(messages, delivered, strict=True)
        )
        return len(messages)

    def send(self, messages: Sequence[Msg]) -> None:
        """Produce ``messages`` in order, wait for delivery, record where they landed."""
        self._io.run(self._send(messages, 0, 0.0))

    def send_paced(self, messages: Sequence[Msg], seconds: float) -> concurrent.futures.Future[int]:
        """Start producing ``messages`` spread over about ``seconds``; returns at once."""
        steps = max(1, int(seconds / 0.1))
        every = max(1, -(-len(messages) // steps))
        return self._io.submit(self._send(messages, every, 0.1))

    # -- settling -----------------------------------------------------------------------

    def _sentinel_skus(self, round_: int, tag: str) -> list[str]:
        """One SKU per effects partition, named for this round and source partition."""
        found: dict[int, str] = {}
        for i in itertools.count():
            sku = f"zz-{round_}-{tag}-{i}"
            found.setdefault(effects_partition(sku, self.partitions), sku)
            if len(found) == self.partitions:
                return [found[p] for p in range(self.partitions)]
        raise AssertionError("unreachable")

    def _sentinels(self, round_: int) -> tuple[list[Msg], list[str]]:
        wire, messages, skus = self.wire, [], []
        at = T0 + timedelta(days=1, minutes=round_)
        for p in range(self.partitions):
            stock = self._sentinel_skus(round_, f"s{p}")
            messages.append(bulk("stock", f"zz-{round_}-s{p}",
                                 [wire.adjusted(s, "dc-east", 1, at) for s in stock], partition=p))
            orders = self._sentinel_skus(round_, f"o{p}")
            messages.append(single(wire.created(
                f"zz-{round_}-o{p}", [(str(j), s, 1, "dc-east") for j, s in enumerate(orders)],
                at=at), partition=p))
            returns = self._sentinel_skus(round_, f"r{p}")
            messages.append(single(wire.received(
                f"zz-{round_}-r{p}", "dc-east", [(str(j), 1, s) for j, s in enumerate(returns)],
                at=at), partition=p))
            skus += stock + orders + returns
        return messages, skus

    def settle(self, timeout: float = 90.0) -> None:
        """Wait until the workers applied everything sent so far (see the module docstring)."""
        round_ = next(self._rounds)
        messages, skus = self._sentinels(round_)
        self.send(messages)
        deadline = time.monotonic() + timeout
        while True:
            present = len(self._io.run(self._live_versions(skus)))
            if present == len(skus):
                break
            if time.monotonic() > deadline or not any(w.alive for w in self.workers.values()):
                raise AssertionError(
                    f"only {present} of {len(skus)} sentinel SKUs of round {round_} reached "
                    "Redis; workers: " + "; ".join(w.describe() for w in self.workers.values())
                )
            time.sleep(0.1)
        versions = self._versions()
        while True:
            time.sleep(0.4)
            again = self._versions()
            if again == versions:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"SKU versions still change after {timeout:.0f} s")
            versions = again

    # -- reading Redis --------------------------------------------------------------------

    async def _live_versions(self, skus: Sequence[str]) -> dict[str, int]:
        """Versions of ``skus`` in the live generation (after a rebuild, the new one)."""
        await self._store.resolve()
        return await self._store.load_versions(list(skus))

    async def _served(self) -> list[Served]:
        """Every SKU's served form in the live generation, as an API replica loads it."""
        await self._store.resolve()
        found: list[Served] = []
        cursor = 0
        while True:
            cursor, page = await self._store.served_page(cursor, 1000)
            found += [decode_served(raw) for raw in page]
            if cursor == 0:
                return found

    def _versions(self) -> dict[str, int]:
        return {s.sku: s.version for s in self._io.run(self._served())}

    def namespace(self) -> str:
        """The effective namespace of the live model."""
        return str(self._io.run(self._store.resolve()))

    def read_model(self) -> Observed:
        """Every SKU's served form in Redis, in the oracle's shapes."""
        seen = Observed()
        for served in self._io.run(self._served()):
            sku = served.sku
            seen.versions[sku] = served.version
            details = decode_detail(served.detail)
            if len(details) != len(served.channels):
                seen.problems.append(f"{sku}: {len(details)} node lists for "
                                     f"{len(served.channels)} channels")
            for channel, nodes in zip(served.channels, details, strict=False):
                body = json.loads(channel.document)
                if body["version"] != served.version or body["sku"] != sku:
                    seen.problems.append(f"{sku}/{channel.channel}: inconsistent header")
                if body["available"] != channel.available:
                    seen.problems.append(f"{sku}/{channel.channel}: figure differs from answer")
                seen.channels[(sku, channel.channel)] = ChannelFigures(
                    body["available"], body["status"]
                )
                for node, available, on_hand, reserved, quarantine, safety in nodes:
                    figures = NodeFigures(
                        on_hand=on_hand,
                        reserved=reserved,
                        quarantine=quarantine,
                        safety_stock=safety,
                        available=available,
                    )
                    shown = seen.nodes.setdefault((sku, node), figures)
                    if shown != figures:
                        seen.problems.append(f"{sku}@{node}: differs between channels")
        return seen

    def check_model(self, reference: Reference | None = None) -> Reference:
        """Assert Redis holds exactly the reference model; returns the reference."""
        reference = reference or self.ledger.reference()
        observed = self.read_model()
        differences = diff_models(reference.model, observed)
        assert not differences, (
            f"Redis differs from the reference model after {reference.events} events:\n"
            + "\n".join(differences)
        )
        return reference

    # -- the consumer group ------------------------------------------------------------

    async def _group_lag(self) -> list[str]:
        """Partitions of the group's topics whose committed offset is behind what was sent.

        Source partitions: the ledger knows where every message landed. Effects
        partitions: read back from the topic (end offsets are not trusted on this broker).
        """
        ends: dict[TopicPartition, int] = {}
        for landed in self.ledger.landed:
            tp = TopicPartition(landed.topic, landed.partition)
            ends[tp] = max(ends.get(tp, 0), landed.offset + 1)
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                  enable_auto_commit=False, auto_offset_reset="earliest")
        await reader.start()
        try:
            effects = [TopicPartition(self.topics["effects"], p)
                       for p in range(self.partitions)]
            reader.assign(effects)
            await reader.seek_to_beginning(*effects)
            last_new = time.monotonic()
            while time.monotonic() - last_new < 1.5:
                batch = await reader.getmany(timeout_ms=200)
                for tp, records in batch.items():
                    if records:
                        ends[tp] = max(ends.get(tp, 0), records[-1].offset + 1)
                        last_new = time.monotonic()
        finally:
            await reader.stop()
        # A member-less client of the group reads its committed offsets (Tansu does not
        # answer the admin client's OffsetFetch version).
        group = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group_id,
                                 enable_auto_commit=False)
        await group.start()
        try:
            committed = {tp: await group.committed(tp) for tp in ends}
        finally:
            await group.stop()
        lagging = []
        for tp, end in sorted(ends.items()):
            found = committed.get(tp)
            at = -1 if found is None else found
            if at < end:
                lagging.append(f"{tp.topic}[{tp.partition}]: committed {at}, end {end}")
        return lagging

    def group_lag(self) -> list[str]:
        """Partitions of the group's topics (sources and effects) whose committed offset
        is behind what was sent, one line each (empty when none)."""
        return self._io.run(self._group_lag())

    # -- reading the dead-letter topic ---------------------------------------------------

    async def _read_dlq(self, at_least: int, idle: float, timeout: float) -> list[DeadLetterSeen]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            parts = [TopicPartition(self.topics["dlq"], p) for p in range(self.partitions)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            seen: list[DeadLetterSeen] = []
            started = last_new = time.monotonic()
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                now = time.monotonic()
                for records in batch.values():
                    for record in records:
                        seen.append(DeadLetterSeen(
                            json.loads(record.value),
                            record.key,
                            {k: bytes(v) for k, v in record.headers or ()},
                        ))
                        last_new = now
                if len(seen) >= at_least and now - last_new >= idle:
                    return seen
                if now - started > timeout:
                    return seen
        finally:
            await consumer.stop()

    def read_dead_letters(
        self, at_least: int, idle: float = 1.5, timeout: float = 30.0
    ) -> list[DeadLetterSeen]:
        """Every record of the dead-letter topic: reads until ``at_least`` came and then
        nothing more for ``idle`` seconds (end offsets are not trusted on this broker)."""
        return self._io.run(self._read_dlq(at_least, idle, timeout))

    def check_dead_letters(self, reference: Reference, *, exactly_once: bool) -> None:
        """Assert the DLQ holds the expected dead letters and nothing else.

        With ``exactly_once`` False a record may appear more than once (a crash
        between sending dead letters and committing the offset resends them).
        """
        seen = self.read_dead_letters(len(reference.dead))
        want = Counter(letter.spot for letter in reference.dead)
        got = Counter(letter.spot for letter in seen)
        if not exactly_once:
            got = Counter(set(got))
        missing = sorted((want - got).elements())
        extra = sorted((got - want).elements())
        assert not missing and not extra, (
            f"dead letters differ: missing {missing}, unexpected {extra}"
        )
