"""Pipeline benchmarks: stocksync's worker against Faust's and the transport's ceilings.

Run ``python -m benchmarks.pipeline`` (``--json`` for machine-readable output).
It starts one embedded broker and one ``redis-server`` on free loopback ports,
then runs every scenario in a fresh subprocess against them, so each figure
and its baseline come from the same run on the same services:

``faust_bare``       a do-nothing agent in a stock ``faust.App`` with stocksync's
                     settings, on one-event messages (the Faust ceiling)
``faust_bare_stocksync``  the same agent in stocksync's app (its consumer hands
                     messages over without Tasks and it has no statistics sensor)
``aiokafka``         one aiokafka consumer reading the same messages (the transport ceiling)
``pipeline_single``  stocksync's whole pipeline, produce to Redis, one-event
                     messages in a realistic mix (80% stock, 20% orders and returns)
``pipeline_bulk``    the same with an ERP full export: 100,000 snapshots in bulk
                     messages of 100 events
``freshness``        steady 1,000 and 2,000 events/s from a producer process;
                     produce-to-Redis age of every applied effect (p50, p99, p99.9, max)

Messages are produced before each consumer starts and timing starts when the
consumer is ready, so the figures are processing rates, not producer rates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import io
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final

__all__ = [
    "PARTITIONS",
    "SCENARIOS",
    "main",
    "paced_traffic",
    "run_settings",
    "services",
    "worker_keeping_ages",
]

SCENARIOS = (
    "faust_bare",
    "faust_bare_stocksync",
    "aiokafka",
    "pipeline_single",
    "pipeline_bulk",
    "freshness",
)
PARTITIONS = 8
#: The scenario's ``--redis`` names a node of a Redis Cluster (``--redis-cluster``).
_CLUSTER = {"on": False}


# --- shared helpers (run inside a scenario's subprocess) ---------------------------------


def run_settings(broker: str, redis_url: str, prefix: str, **fields: Any) -> Any:
    """The settings of one run: ``prefix`` names its topics, Redis namespace and consumer
    group, on PARTITIONS partitions, the worker's port free; ``fields`` set any other."""
    from stocksync.config.settings import Settings, WorkerSettings

    return Settings(
        broker=broker,
        redis_url=redis_url,
        topic_prefix=prefix,
        partitions=PARTITIONS,
        redis_namespace=prefix,
        redis_cluster=_CLUSTER["on"],
        worker=WorkerSettings(port=0, group_id=prefix),
        **fields,
    )


async def _model_exists(settings: Any) -> None:
    """Give the run's key space an empty model, as the first start of its worker leaves it.

    Without one the worker would first rebuild the model from the topics the run
    filled beforehand, and the measured run would only skip what that applied.
    """
    from stocksync.ops.access import open_store

    store = open_store(settings)
    try:
        await store.begin_generation("g-benchmark")
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def worker_keeping_ages(
    bootstrap: str, settings: Any
) -> AsyncIterator[tuple[Any, list[float]]]:
    """The worker in this process on an empty model, ready: (its metrics, the list it
    appends every produce-to-Redis age to); stopped on leaving."""
    from stocksync.agents.metrics import WorkerMetrics
    from stocksync.agents.topics import ensure_topics
    from stocksync.daemon.worker import serve

    await ensure_topics(bootstrap, settings)
    await _model_exists(settings)
    metrics = WorkerMetrics()
    # Every produce-to-Redis age, exactly: the metric's buckets are too coarse for a p99.
    ages: list[float] = []
    observe_many = metrics.freshness.observe_many

    def keep(label: str, values: Iterable[float]) -> None:
        values = list(values)
        if label == "produced":
            ages.extend(values)
        observe_many(label, values)

    metrics.freshness.observe_many = keep  # type: ignore[method-assign]
    ready = asyncio.Event()
    task = asyncio.create_task(serve(settings, handle_signals=False, metrics=metrics, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        yield metrics, ages
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def paced_traffic(bootstrap: str, prefix: str, rate: int, seconds: float) -> float:
    """:func:`paced_producer` in its own process, as a real source system would send;
    the rate it achieved."""
    producer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.pipeline",
        "--produce",
        prefix,
        "--bootstrap",
        bootstrap,
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await producer.communicate()
    return float(out.decode().strip().splitlines()[-1])


async def _produce(bootstrap: str, settings: Any, messages: list[Any]) -> None:
    from aiokafka import AIOKafkaProducer

    from stocksync.agents.topics import ensure_topics, topic_names

    await ensure_topics(bootstrap, settings)
    names = topic_names(settings)
    topic_of = {"stock": names.stock, "orders": names.orders, "returns": names.returns}
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=1_048_576,
        max_request_size=8_388_608,
    )
    await producer.start()
    try:
        pending = [await producer.send(topic_of[m.kind], m.value, key=m.key) for m in messages]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def _demo(settings: Any, skus: int) -> Any:
    from stocksync.daemon.demo import DemoStream, demo_skus

    return DemoStream(
        skus=demo_skus(skus),
        nodes=sorted({n for c in settings.channels for n in c.nodes}),
        channels=[c.name for c in settings.channels],
        seed=42,
    )


def _single_messages(settings: Any, count: int) -> list[Any]:
    return list(_demo(settings, 10_000).events(count))


async def _wait(
    condition: Callable[[], bool], timeout: float, what: str, every: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _redis_cpu(redis_url: str) -> float:
    """CPU seconds the Redis server (every node of a cluster) has used so far (INFO)."""
    from redis import asyncio as aioredis

    if _CLUSTER["on"]:
        cluster = aioredis.RedisCluster.from_url(redis_url)
        try:
            per_node = await cluster.info("cpu", target_nodes=aioredis.RedisCluster.ALL_NODES)
        finally:
            await cluster.aclose()
        return sum(
            float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in per_node.values()
        )
    client = aioredis.from_url(redis_url)
    try:
        info = await client.info("cpu")
    finally:
        await client.aclose()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _counter(metric: Any) -> float:
    return float(
        sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total"))
    )


# --- scenarios --------------------------------------------------------------------------


async def faust_bare(bootstrap: str, redis_url: str, events: int) -> dict[str, Any]:
    """A do-nothing agent on the three source topics, in a stock ``faust.App``.

    The app has every setting of stocksync's (uvloop, raw serializers, Cython,
    2,000 records per poll, 8 MiB fetches, ...) but Faust's own consumer: this
    is the Faust ceiling the pipeline is compared with.
    """
    import faust

    from stocksync.agents.app import app_options

    return await _bare(
        bootstrap,
        redis_url,
        events,
        lambda settings, datadir: faust.App(
            settings.worker.group_id, **app_options(settings, datadir=datadir)
        ),
    )


async def faust_bare_stocksync(bootstrap: str, redis_url: str, events: int) -> dict[str, Any]:
    """The same do-nothing agent in stocksync's app (its consumer delivers without Tasks)."""
    from stocksync.agents.app import create_app

    return await _bare(
        bootstrap,
        redis_url,
        events,
        lambda settings, datadir: create_app(settings, datadir=datadir),
    )


async def _bare(
    bootstrap: str, redis_url: str, events: int, new_app: Callable[[Any, str], Any]
) -> dict[str, Any]:
    from stocksync.agents.app import raw_topic, start_worker, stop_worker
    from stocksync.agents.topics import topic_names

    settings = run_settings(f"kafka://{bootstrap}", redis_url, f"b{uuid.uuid4().hex[:8]}")
    messages = _single_messages(settings, events)
    await _produce(bootstrap, settings, messages)
    names = topic_names(settings)
    app = new_app(settings, tempfile.mkdtemp())
    seen = 0

    async def drain(stream: Any) -> None:
        nonlocal seen
        async for batch in stream.take_events(settings.worker.batch_size, 0.05):
            seen += len(batch)

    for name in names.sources:
        app.agent(raw_topic(app, name), name=f"bare.{name}")(drain)
    worker = await start_worker(app, timeout=60)
    started, cpu = time.perf_counter(), _cpu()
    try:
        await _wait(lambda: seen >= events, 600, "the bare agent")
        elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
    finally:
        await stop_worker(worker)
    return {
        "messages": events,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "messages_per_s": events / elapsed,
        "worker_us_per_event": 1e6 * cpu / events,
    }


async def aiokafka(bootstrap: str, redis_url: str, events: int) -> dict[str, Any]:
    """One aiokafka consumer reading the same messages."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stocksync.agents.topics import topic_names

    settings = run_settings(f"kafka://{bootstrap}", redis_url, f"k{uuid.uuid4().hex[:8]}")
    await _produce(bootstrap, settings, _single_messages(settings, events))
    names = topic_names(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8_388_608,
        fetch_max_bytes=8_388_608,
    )
    consumer.assign([TopicPartition(t, p) for t in names.sources for p in range(PARTITIONS)])
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < events:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            seen += sum(len(records) for records in batch.values())
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {"messages": events, "seconds": elapsed, "messages_per_s": events / elapsed}


def _rates(events: int, elapsed: float, cpu: float, redis_cpu: float) -> dict[str, Any]:
    """The figures of ``events`` processed in ``elapsed`` seconds with ``cpu`` seconds of
    the worker(s) and ``redis_cpu`` of Redis: totals, events/s and CPU per event."""
    return {
        "events": events,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "redis_cpu_seconds": redis_cpu,
        "events_per_s": events / elapsed,
        # CPU per event compares across runs on a loaded machine; events/s do not.
        "worker_us_per_event": 1e6 * cpu / events,
        "redis_us_per_event": 1e6 * redis_cpu / events,
    }


async def _run_worker(
    bootstrap: str, redis_url: str, messages: list[Any], events: int, profile: bool
) -> dict[str, Any]:
    from stocksync.agents.metrics import WorkerMetrics
    from stocksync.daemon.worker import serve

    settings = run_settings(f"kafka://{bootstrap}", redis_url, f"p{uuid.uuid4().hex[:8]}")
    await _produce(bootstrap, settings, messages)
    await _model_exists(settings)
    metrics = WorkerMetrics()
    ready = asyncio.Event()
    task = asyncio.create_task(serve(settings, handle_signals=False, metrics=metrics, ready=ready))
    await asyncio.wait_for(ready.wait(), 60)
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    redis_cpu = await _redis_cpu(redis_url)
    started, cpu = time.perf_counter(), _cpu()

    def translated() -> float:
        return sum(
            _counter(m)
            for m in (metrics.events_consumed, metrics.events_rejected, metrics.events_skipped)
        )

    def applied() -> bool:
        done = _counter(metrics.effects_applied) + _counter(metrics.effects_skipped)
        return translated() >= events and done >= _counter(metrics.effects_sent)

    try:
        await _wait(applied, 900, "the pipeline")
        elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
        redis_cpu = await _redis_cpu(redis_url) - redis_cpu
    finally:
        if profiler:
            profiler.disable()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    result: dict[str, Any] = {
        "batches": _batches(metrics),
        **_rates(events, elapsed, cpu, redis_cpu),
        "effects": _counter(metrics.effects_sent),
        "skus_written": _counter(metrics.skus_written),
    }
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
        result["profile"] = out.getvalue()
    return result


#: Worker processes of a scenario (``--workers``); 0 runs the one worker in the scenario's process.
_WORKERS = {"count": 0}


def _metrics_of(port: int) -> dict[str, float]:
    """A worker process's /metrics, summed per metric name (labels dropped)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            key = name.split("{", 1)[0]
            sums[key] = sums.get(key, 0.0) + float(value)
    return sums


def _consumed(ports: list[int]) -> list[float]:
    return [_metrics_of(p).get("stocksync_events_consumed_total", 0.0) for p in ports]


async def _run_processes(
    bootstrap: str, redis_url: str, messages: list[Any], events: int, workers: int
) -> dict[str, Any]:
    """``workers`` worker processes in one consumer group on the run's partitions.

    The workers start on empty topics and are warmed up (events on other SKUs) until
    every one of them has consumed, so the group's partitions are spread over all of
    them. They are then stopped (SIGSTOP) while the backlog is produced and continued
    (SIGCONT) together: as in the in-process scenarios, the figures are processing
    rates over a backlog, not producer rates. Worker CPU is every worker's, summed.
    """
    import signal

    import msgspec

    from benchmarks.api.common import cpu_seconds
    from stocksync.daemon.demo import DemoStream
    from stocksync.daemon.services import free_port

    settings = run_settings(f"kafka://{bootstrap}", redis_url, f"p{uuid.uuid4().hex[:8]}")
    await _model_exists(settings)
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for i in range(workers):
                port = free_port()
                config = Path(tmp) / f"worker-{i}.json"
                chosen = msgspec.structs.replace(
                    settings, worker=msgspec.structs.replace(settings.worker, port=port)
                )
                config.write_bytes(msgspec.json.encode(chosen))
                with (Path(tmp) / f"worker-{i}.log").open("ab") as log:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "benchmarks.pipeline", "--serve-worker",
                         str(config)],
                        stdout=subprocess.DEVNULL, stderr=log,
                    ))
                ports.append(port)
            try:
                await asyncio.to_thread(_wait_ready, procs, ports)
            except RuntimeError:
                for i in range(workers):  # why a worker did not start, before tmp goes
                    log = (Path(tmp) / f"worker-{i}.log").read_text(errors="replace")
                    print(f"worker {i}:\n{log[-2000:]}", file=sys.stderr)
                raise
            warm = DemoStream(
                skus=[f"WARM-{i:04d}" for i in range(400)],
                nodes=sorted({n for c in settings.channels for n in c.nodes}),
                channels=[c.name for c in settings.channels],
                seed=1,
            )
            sent = 0
            for _ in range(20):
                before = _consumed(ports)
                await _produce(bootstrap, settings, list(warm.events(400)))
                sent += 400
                await _wait(functools.partial(_processes_done, ports, sent), 120, "the warm-up")
                if all(a > b for a, b in zip(_consumed(ports), before, strict=True)):
                    break
            else:
                raise RuntimeError("a worker got no partition in the warm-up")
            before = _consumed(ports)
            for proc in procs:
                proc.send_signal(signal.SIGSTOP)
            await _produce(bootstrap, settings, messages)
            redis_cpu = await _redis_cpu(redis_url)
            cpu = sum(cpu_seconds(proc.pid) for proc in procs)
            started = time.perf_counter()
            for proc in procs:
                proc.send_signal(signal.SIGCONT)
            # Every poll renders each worker's /metrics: a few a second keep that off the figures.
            await _wait(functools.partial(_processes_done, ports, sent + events), 300,
                        "the pipeline", every=0.25)
            elapsed = time.perf_counter() - started
            cpu = sum(cpu_seconds(proc.pid) for proc in procs) - cpu
            redis_cpu = await _redis_cpu(redis_url) - redis_cpu
            per_worker = [a - b for a, b in zip(_consumed(ports), before, strict=True)]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
    return {
        "workers": workers,
        **_rates(events, elapsed, cpu, redis_cpu),
        "events_per_worker": per_worker,
    }


def _wait_ready(procs: list[subprocess.Popen[bytes]], ports: list[int]) -> None:
    from benchmarks.api.common import wait_http

    for proc, port in zip(procs, ports, strict=True):
        wait_http(f"http://127.0.0.1:{port}/readyz", 120, proc)


def _processes_done(ports: list[int], events: int) -> bool:
    """Whether the workers together translated ``events`` and applied every effect sent."""
    totals: dict[str, float] = {}
    for port in ports:
        for key, value in _metrics_of(port).items():
            totals[key] = totals.get(key, 0.0) + value
    translated = sum(totals.get(f"stocksync_events_{k}_total", 0.0)
                     for k in ("consumed", "rejected", "skipped"))
    done = (totals.get("stocksync_effects_applied_total", 0.0)
            + totals.get("stocksync_effects_skipped_total", 0.0))
    return translated >= events and done >= totals.get("stocksync_effects_sent_total", 0.0)


def _serve_worker(config: str) -> int:
    """One worker process of :func:`_run_processes`, with a broker session that outlasts
    the stop while the backlog is produced (the worker's own 6 s would expire on a
    loaded machine, and the group would rebalance in the middle of the measurement)."""
    import logging

    import msgspec

    from stocksync.agents import app
    from stocksync.config.settings import Settings
    from stocksync.daemon.worker import run

    plain = app.app_options

    def patient(*args: Any, **kwargs: Any) -> dict[str, Any]:
        options = plain(*args, **kwargs)
        options.update(broker_session_timeout=60.0, broker_rebalance_timeout=60.0)
        return options

    app.app_options = patient  # type: ignore[assignment]
    logging.basicConfig(level=logging.WARNING)
    return run(msgspec.json.decode(Path(config).read_bytes(), type=Settings))


async def pipeline_single(bootstrap: str, redis_url: str, events: int) -> dict[str, Any]:
    """stocksync's pipeline over one-event messages, realistic mix."""
    from stocksync.config.settings import Settings

    messages = _single_messages(Settings(), events)
    profile = os.environ.get("BENCH_PROFILE") == "1"
    if _WORKERS["count"]:
        result = await _run_processes(bootstrap, redis_url, messages, events, _WORKERS["count"])
    else:
        result = await _run_worker(bootstrap, redis_url, messages, events, profile=profile)
    result["messages_per_s"] = result["events_per_s"]
    return result


async def pipeline_bulk(bootstrap: str, redis_url: str, events: int) -> dict[str, Any]:
    """stocksync's pipeline over an ERP export of 100,000 snapshots in bulk messages of 100."""
    from stocksync.config.settings import Settings

    snapshots = 100_000
    nodes = 2
    demo = _demo(Settings(), snapshots // nodes)
    messages = list(demo.snapshots(per_message=100))
    profile = os.environ.get("BENCH_PROFILE") == "1"
    if _WORKERS["count"]:
        return await _run_processes(
            bootstrap, redis_url, messages, snapshots, _WORKERS["count"]
        )
    return await _run_worker(bootstrap, redis_url, messages, snapshots, profile=profile)


async def paced_producer(bootstrap: str, prefix: str, rate: int, seconds: float) -> float:
    """Produce the demo mix at ``rate`` events/s for ``seconds``; returns the rate achieved."""
    from aiokafka import AIOKafkaProducer

    from stocksync.agents.topics import topic_names

    settings = run_settings(f"kafka://{bootstrap}", "redis://unused", prefix)
    names = topic_names(settings)
    topic_of = {"stock": names.stock, "orders": names.orders, "returns": names.returns}
    demo = _demo(settings, 10_000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await producer.start()
    try:
        tick = 0.01
        per_tick = int(rate * tick)
        started = time.perf_counter()
        for step in range(int(seconds / tick)):
            for m in demo.events(per_tick):
                await producer.send(topic_of[m.kind], m.value, key=m.key)
            delay = started + (step + 1) * tick - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await producer.flush()
        return rate * seconds / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def freshness(bootstrap: str, redis_url: str, events: int) -> dict[str, Any]:
    """Steady traffic from another process; the worker's produce-to-Redis freshness per rate."""
    return {str(rate): await _freshness_at(bootstrap, redis_url, rate) for rate in (1000, 2000)}


async def _freshness_at(bootstrap: str, redis_url: str, rate: int) -> dict[str, Any]:
    seconds = 15
    prefix = f"f{uuid.uuid4().hex[:8]}"
    settings = run_settings(f"kafka://{bootstrap}", redis_url, prefix)
    async with worker_keeping_ages(bootstrap, settings) as (metrics, ages):
        achieved = await paced_traffic(bootstrap, prefix, rate, seconds)
        await asyncio.sleep(2)
    cuts = statistics.quantiles(ages, n=1000, method="inclusive")
    return {
        "rate": achieved,
        "effects_applied": len(ages),
        "effects_sent": _counter(metrics.effects_sent),
        "p50_ms": cuts[499] * 1000,
        "p99_ms": cuts[989] * 1000,
        "p999_ms": cuts[998] * 1000,
        "max_ms": max(ages) * 1000,
    }


def _batches(metrics: Any) -> dict[str, dict[str, float]]:
    """Per stage: batches, mean messages per batch and mean seconds per batch."""
    sums: dict[tuple[str, str, str], float] = {}
    for family in (metrics.batch_size, metrics.batch_seconds):
        for metric in family.collect():
            for sample in metric.samples:
                if sample.name.endswith(("_sum", "_count")):
                    kind = "sum" if sample.name.endswith("_sum") else "count"
                    sums[(metric.name, sample.labels["stage"], kind)] = sample.value
    stages = {stage for _, stage, _ in sums}
    out: dict[str, dict[str, float]] = {}
    for stage in sorted(stages):
        count = sums.get(("stocksync_batch_size", stage, "count"), 0.0)
        if count:
            out[stage] = {
                "batches": count,
                "mean_messages": sums.get(("stocksync_batch_size", stage, "sum"), 0.0) / count,
                "mean_ms": 1000 * sums.get(("stocksync_batch_seconds", stage, "sum"), 0.0) / count,
            }
    return out


# --- runner -----------------------------------------------------------------------------


@contextlib.contextmanager
def services() -> Iterator[tuple[Path, Any, Any]]:
    """A temporary folder with one embedded broker and one ``redis-server`` on free
    loopback ports in it: (folder, broker, redis), for a benchmark's whole run."""
    from stocksync.daemon.services import RedisServer, TansuBroker

    with (
        tempfile.TemporaryDirectory() as tmp,
        TansuBroker(data_dir=Path(tmp) / "broker") as broker,
        RedisServer(data_dir=Path(tmp) / "redis") as redis,
    ):
        yield Path(tmp), broker, redis


def _scenario(name: str, bootstrap: str, redis_url: str, events: int) -> None:
    from stocksync.agents.app import new_event_loop

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    function = globals()[name]
    result = loop.run_until_complete(function(bootstrap, redis_url, events))
    print(json.dumps(result))


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    """Run every scenario in its own subprocess and print the table (or JSON)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=100_000, help="one-event messages per run")
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, help="run only these")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of every scenario; the median is reported"
    )
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="also run every scenario from this checkout of stocksync (e.g. a worktree of an "
        "older commit), interleaved with this one's, and report this / baseline ratios",
    )
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--redis-cluster", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--produce", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--serve-worker", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, default=2000, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=15, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_worker:
        return _serve_worker(args.serve_worker)
    if args.produce:
        achieved = asyncio.run(
            paced_producer(args.bootstrap, args.produce, args.rate, args.seconds)
        )
        print(achieved)
        return 0
    if args.scenario:
        _CLUSTER["on"] = args.redis_cluster
        _WORKERS["count"] = args.workers
        _scenario(args.scenario, args.bootstrap, args.redis, args.events)
        return 0

    results: dict[str, Any] = {}
    with services() as (_, broker, redis):
        runs: dict[str, list[dict[str, Any]]] = {}
        baseline_runs: dict[str, list[dict[str, Any]]] = {}
        # Rounds interleave the scenarios (and the baseline's run of each), so a
        # baseline and its figure share each round's conditions; the median round
        # is reported, with every round kept.
        for round_ in range(args.repeat):
            for name in args.only or SCENARIOS:
                print(f"round {round_ + 1}/{args.repeat}: {name}...", file=sys.stderr, flush=True)
                if args.baseline:
                    baseline_runs.setdefault(name, []).append(
                        _run_scenario(name, broker, redis, args.events, checkout=args.baseline)
                    )
                    redis.flushall()
                runs.setdefault(name, []).append(_run_scenario(name, broker, redis, args.events))
                redis.flushall()
        results = _medians(runs)
    report: dict[str, Any] = {
        "machine": _machine(), "results": results, "ratios": _ratios(results)
    }
    if args.baseline:
        baseline = _medians(baseline_runs)
        report["baseline"] = {"checkout": args.baseline, "results": baseline}
        report["versus_baseline"] = _versus(results, baseline)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0


def _medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, attempts in runs.items():
        results[name] = _median_run(attempts)
        if len(attempts) > 1:
            results[name]["rounds"] = [_headline(a) for a in attempts]
            cpu = [_per_event(a, "worker_us_per_event") for a in attempts]
            if all(c is not None for c in cpu):
                results[name]["rounds_worker_us_per_event"] = cpu
    return results


def _per_event(result: dict[str, Any], key: str) -> float | None:
    """``worker_us_per_event`` or ``redis_us_per_event``, also from a baseline's older output."""
    if key in result:
        return float(result[key])
    seconds = result.get("cpu_seconds" if key.startswith("worker") else "redis_cpu_seconds")
    count = result.get("events") or result.get("messages")
    return 1e6 * float(seconds) / float(count) if seconds is not None and count else None


def _versus(results: dict[str, Any], baseline: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per scenario: this checkout's rate and CPU per event over the baseline's, same run."""
    out: dict[str, dict[str, float]] = {}
    for name, result in results.items():
        base = baseline.get(name, {})
        ratios: dict[str, float] = {}
        mine, theirs = _headline(result), _headline(base)
        if mine and theirs and name != "freshness":
            ratios["rate"] = mine / theirs
        for key in ("worker_us_per_event", "redis_us_per_event"):
            a, b = _per_event(result, key), _per_event(base, key)
            if a is not None and b:
                ratios[key.removesuffix("_us_per_event") + "_cpu"] = a / b
        if ratios:
            out[name] = ratios
    return out


def _run_scenario(
    name: str,
    broker: Any,
    redis: Any,
    events: int,
    *,
    cluster: bool = False,
    checkout: str | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Run one scenario in a fresh subprocess (``cluster``: ``redis`` is a cluster's node;
    ``checkout``: from that checkout of stocksync, its own benchmark code and all;
    ``workers``: that many worker processes in one consumer group, not one in-process)."""
    env = None
    if checkout is not None:
        root = str(Path(checkout).resolve())
        env = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.pipeline",
            "--scenario",
            name,
            "--bootstrap",
            broker.bootstrap,
            "--redis",
            redis.url,
            "--events",
            str(events),
            *(["--redis-cluster"] if cluster else []),
            *(["--workers", str(workers)] if workers else []),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=root if checkout is not None else None,
    )
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return {"error": f"exit status {done.returncode}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _headline(result: dict[str, Any]) -> float | None:
    for key in ("events_per_s", "messages_per_s"):
        if key in result:
            return float(result[key])
    if "2000" in result:
        return float(result["2000"]["p99_ms"])
    return None


def _median_run(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [a for a in attempts if _headline(a) is not None]
    if not scored:
        return attempts[-1]
    scored.sort(key=lambda a: _headline(a) or 0.0)
    return dict(scored[len(scored) // 2])


def _ratios(results: dict[str, Any]) -> dict[str, float]:
    def rate(name: str, key: str) -> float | None:
        value = results.get(name, {}).get(key)
        return float(value) if value else None

    ratios: dict[str, float] = {}
    c = rate("pipeline_single", "events_per_s")
    a = rate("faust_bare", "messages_per_s")
    a2 = rate("faust_bare_stocksync", "messages_per_s")
    b = rate("aiokafka", "messages_per_s")
    if c and a:
        ratios["c/a"] = c / a
    if c and a2:
        ratios["c/a'"] = c / a2
    if c and b:
        ratios["c/b"] = c / b
    return ratios


def _cpu_text(result: dict[str, Any]) -> str:
    """CPU per event of the worker (and of Redis): the figures that compare under load."""
    worker = _per_event(result, "worker_us_per_event")
    if worker is None:
        return ""
    redis = _per_event(result, "redis_us_per_event") if "redis_cpu_seconds" in result else None
    return f"  worker {worker:.1f} us/event" + (
        f", Redis {redis:.1f} us/event" if redis is not None else ""
    )


_ROWS: Final = (
    ("(a) bare Faust agent, one-event messages", "faust_bare", "messages_per_s"),
    ("(a') the same agent in stocksync's app", "faust_bare_stocksync", "messages_per_s"),
    ("(b) aiokafka consumer, same messages", "aiokafka", "messages_per_s"),
    ("(c) stocksync pipeline, one-event mix", "pipeline_single", "events_per_s"),
    ("(d) stocksync pipeline, bulk x100", "pipeline_bulk", "events_per_s"),
)


def _print_rows(results: dict[str, Any], indent: str = "") -> None:
    for label, name, key in _ROWS:
        result = results.get(name, {})
        value = result.get(key)
        text = f"{value:,.0f}/s" if value else result.get("error", "-")
        rounds = result.get("rounds")
        spread = f"  rounds: {', '.join(f'{r:,.0f}' for r in rounds if r)}" if rounds else ""
        print(f"{indent}{label:<{45 - len(indent)}} {text:>14}{_cpu_text(result)}{spread}")


def _print_table(report: dict[str, Any]) -> None:
    r = report["results"]
    machine = report["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}")
    _print_rows(r)
    for name, value in report["ratios"].items():
        print(f"{name:<45} {value:>14.2f}")
    for fresh in r.get("freshness", {}).values():
        if isinstance(fresh, dict) and "p50_ms" in fresh:
            label = f"(e) freshness at {fresh['rate']:,.0f} events/s"
            print(f"{label:<45} p50 {fresh['p50_ms']:.0f} ms, p99 {fresh['p99_ms']:.0f} ms")
    baseline = report.get("baseline")
    if baseline:
        print(f"baseline {baseline['checkout']}, same run:")
        _print_rows(baseline["results"], indent="  ")
        for name, ratios in report.get("versus_baseline", {}).items():
            text = ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
            print(f"{name} / baseline: {text}")
    for name in ("pipeline_single", "pipeline_bulk"):
        profile = r.get(name, {}).get("profile")
        if profile:
            print(f"profile of {name}:\n{profile}")

if __name__ == "__main__":
    raise SystemExit(main())
