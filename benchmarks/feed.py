"""Feed benchmark: what ``stocksync feed`` sustains, and what it adds to the pipeline's age.

Run ``python -m benchmarks.feed`` (``--json`` for machine-readable output). It
starts one embedded broker and one ``redis-server`` on free loopback ports, then:

``publisher``  a ``stocksync feed`` process (``notify = "quantity"``, no interval)
               is active on an empty model; ``--skus`` SKUs are then written to the
               change stream through the store, as fast as Redis takes them; the
               figure is messages per second from the first write to the broker's
               acknowledgement of the last message.
``freshness``  the worker (in this process) under a steady ``--rate`` events/s of
               one-event messages, and the feed process with ``--interval`` ms:
               produce-to-Redis age of every applied effect (the pipeline's own
               freshness) next to served-to-published delay of every feed message
               (its ``occurred_at``, when the change reached Redis, to the record's
               timestamp on the feed topic), p50 and p99, in the same run.

Both report the feed process's CPU (user + system, from ``/proc``) per message:
unlike the rates, it hardly moves when other work shares the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.api.common import cpu_seconds
from benchmarks.pipeline import (
    PARTITIONS,
    paced_traffic,
    run_settings,
    services,
    worker_keeping_ages,
)

__all__ = ["main"]


def _settings(broker: str, redis_url: str, prefix: str, interval: int) -> Any:
    """A run's settings (:func:`~benchmarks.pipeline.run_settings`) with the feed's channel."""
    from stocksync.config.settings import ChannelSettings

    return run_settings(
        broker, redis_url, prefix,
        channels=[ChannelSettings(name="web", nodes=["dc-east", "dc-west"],
                                  low_stock_threshold=5, notify="quantity",
                                  notify_min_interval_ms=interval)],
    )


def _config(path: Path, interval: int) -> None:
    path.write_text(
        f"partitions = {PARTITIONS}\n\n[[channels]]\nname = \"web\"\n"
        "nodes = [\"dc-east\", \"dc-west\"]\nlow_stock_threshold = 5\n"
        f"notify = \"quantity\"\nnotify_min_interval_ms = {interval}\n"
    )


def _start_feed(workdir: Path, bootstrap: str, redis_url: str, prefix: str,
                interval: int) -> subprocess.Popen[bytes]:
    config = workdir / f"{prefix}.toml"
    _config(config, interval)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    env.update(STOCKSYNC_BROKER=f"kafka://{bootstrap}", STOCKSYNC_REDIS_URL=redis_url,
               STOCKSYNC_TOPIC_PREFIX=prefix, STOCKSYNC_FEED_PORT="0")
    log = (workdir / f"{prefix}-feed.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "stocksync", "--config", str(config), "feed"],
        env=env, stdout=log, stderr=log,
    )


async def _wait_active(workdir: Path, prefix: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    log = workdir / f"{prefix}-feed.log"
    while b"active now" not in log.read_bytes() or b"feed state loaded" not in log.read_bytes():
        if time.monotonic() > deadline:
            raise TimeoutError(log.read_text())
        await asyncio.sleep(0.1)


async def _read_feed(bootstrap: str, topic: str, want: int, timeout: float,
                     delays: list[float]) -> tuple[int, float]:
    """Read until ``want`` messages (or ``timeout``); (count, time of the last record)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        while not consumer.partitions_for_topic(topic):
            await consumer.topics()
            await asyncio.sleep(0.2)
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        count, last = 0, 0.0
        deadline = time.monotonic() + timeout
        while count < want and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for r in records:
                    count += 1
                    last = max(last, r.timestamp / 1000)
                    at = json.loads(r.value)["occurred_at"]
                    delays.append(r.timestamp / 1000 - datetime.fromisoformat(at).timestamp())
        return count, last
    finally:
        await consumer.stop()


async def publisher(bootstrap: str, redis_url: str, workdir: Path, skus: int) -> dict[str, Any]:
    """Messages per second from the change stream to acknowledged feed messages."""
    from stocksync.codecs.state import Position
    from stocksync.ops.access import open_store
    from stocksync.store import Write

    prefix = f"b{uuid.uuid4().hex[:8]}"
    settings = _settings(f"kafka://{bootstrap}", redis_url, prefix, 0)
    store = open_store(settings)
    await store.begin_generation("g-benchmark")
    feed = _start_feed(workdir, bootstrap, redis_url, prefix, 0)
    try:
        await _wait_active(workdir, prefix)
        cpu = cpu_seconds(feed.pid)
        started = time.time()
        for start in range(0, skus, 2000):
            await store.write_batch([
                Write(Position(sku=f"B-{i:07d}", version=1, updated_at=int(started * 1000)), 0)
                for i in range(start, min(skus, start + 2000))
            ])
        written = time.time() - started
        delays: list[float] = []
        count, last = await _read_feed(bootstrap, f"{prefix}.availability.v1", skus, 300, delays)
        cpu = cpu_seconds(feed.pid) - cpu
    finally:
        feed.terminate()
        feed.wait(30)
        await store.close()
    seconds = last - started
    return {"skus": skus, "messages": count, "write_seconds": written,
            "seconds": seconds, "messages_per_s": count / seconds if seconds else 0.0,
            "feed_cpu_seconds": cpu, "cpu_us_per_message": cpu / count * 1e6 if count else 0.0}


async def freshness(bootstrap: str, redis_url: str, workdir: Path, rate: int, seconds: float,
                    interval: int) -> dict[str, Any]:
    """The pipeline's produce-to-Redis age and the feed's served-to-published delay."""
    prefix = f"f{uuid.uuid4().hex[:8]}"
    settings = _settings(f"kafka://{bootstrap}", redis_url, prefix, interval)
    delays: list[float] = []
    async with worker_keeping_ages(bootstrap, settings) as (_metrics, ages):
        feed = _start_feed(workdir, bootstrap, redis_url, prefix, interval)
        try:
            await _wait_active(workdir, prefix)
            cpu = cpu_seconds(feed.pid)
            reading = asyncio.create_task(_read_feed(
                bootstrap, f"{prefix}.availability.v1", 10**9, seconds + 5 + interval / 1000,
                delays,
            ))
            achieved = await paced_traffic(bootstrap, prefix, rate, seconds)
            count, _last = await reading
            cpu = cpu_seconds(feed.pid) - cpu
        finally:
            feed.terminate()
            feed.wait(30)

    def cut(values: list[float]) -> dict[str, float]:
        q = statistics.quantiles(values, n=100, method="inclusive")
        return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "max_ms": max(values) * 1000}

    return {"rate": achieved, "interval_ms": interval, "effects_applied": len(ages),
            "messages": count, "pipeline": cut(ages), "feed": cut(delays),
            "feed_cpu_seconds": cpu, "cpu_us_per_message": cpu / count * 1e6 if count else 0.0}


def main(argv: list[str] | None = None) -> int:
    """Start the services, run both scenarios, print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.feed")
    parser.add_argument("--skus", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--interval", type=int, action="append")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    with services() as (work, broker, redis):
        report["publisher"] = asyncio.run(publisher(broker.bootstrap, redis.url, work, args.skus))
        report["freshness"] = [
            asyncio.run(freshness(broker.bootstrap, redis.url, work, args.rate, args.seconds, i))
            for i in (args.interval or [0, 1000])
        ]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    p = report["publisher"]
    print(f"publisher: {p['messages']} messages in {p['seconds']:.2f} s ="
          f" {p['messages_per_s']:,.0f} messages/s (writes took {p['write_seconds']:.2f} s),"
          f" feed CPU {p['cpu_us_per_message']:.0f} us/message")
    for f in report["freshness"]:
        print(f"at {f['rate']:.0f} events/s, notify_min_interval_ms = {f['interval_ms']}:"
              f" pipeline produce->Redis p50 {f['pipeline']['p50_ms']:.0f} ms,"
              f" p99 {f['pipeline']['p99_ms']:.0f} ms; feed served->published"
              f" p50 {f['feed']['p50_ms']:.0f} ms, p99 {f['feed']['p99_ms']:.0f} ms"
              f" ({f['messages']} messages, feed CPU {f['cpu_us_per_message']:.0f} us/message"
              " incl. following the model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
