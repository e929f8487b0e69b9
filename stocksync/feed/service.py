"""``stocksync feed``: the availability feed's process, active or standing by.

Start-up: the feed topics (``{prefix}.availability.v1``, ``{prefix}.feed.dlq``)
are created when missing, Redis must answer, then the process loads and
follows the model as an API replica does, whether active or not, so a standby
takes over with its model warm. One process is active: the one holding the
lease in Redis (:class:`~stocksync.store.feed.FeedStore`, renewed five times
per ``feed.lease_seconds``); the others try every half second and take over
within ``lease_seconds`` + 0.5 s of the active one stopping (at once when it
stops cleanly and releases it). The active process runs the publisher
(:mod:`stocksync.feed.publisher`) and one task per webhook
(:mod:`stocksync.feed.webhooks`); losing the lease stops both at once.

Its own aiohttp server answers ``/healthz``, ``/readyz`` (200 with the role,
``active`` or ``standby``, once the model is loaded and Redis answers) and
``/metrics`` on ``feed.port`` (0 picks a free one, logged at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Final

import uvloop
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.backoff import NoBackoff
from redis.retry import Retry

from stocksync.api.errors import error_response, json_errors, not_ready
from stocksync.api.model import AvailabilityModel, ModelSync
from stocksync.config.connections import kafka_client_options, redis_client_options
from stocksync.config.loader import bootstrap_servers
from stocksync.config.settings import Settings
from stocksync.daemon.collector import collect_less
from stocksync.errors import StocksyncError
from stocksync.feed.metrics import FeedMetrics
from stocksync.feed.publisher import Publisher, feed_topic
from stocksync.feed.webhooks import Webhook
from stocksync.store import RedisStore, StoreUnavailable
from stocksync.store.feed import FeedStore, LeaseLost
from stocksync.store.holds import HoldStore
from stocksync.store.layout import Keys
from stocksync.store.redis import open_client
from stocksync.tasks import cancel_and_wait

__all__ = ["FeedError", "FeedService", "KafkaSender", "dlq_topic", "ensure_feed_topics", "run"]

log = logging.getLogger("stocksync.feed")

_SOCKET_TIMEOUT: Final = 5.0
_CONNECT_TIMEOUT: Final = 2.0
#: Bytes of one record batch (a round of 2,000 messages is about 500 KB over all partitions).
_BATCH_BYTES: Final = 256 * 1024
_partitioner: Final = DefaultPartitioner()
#: Seconds between two tries of a standby to take the lease.
_STANDBY_POLL: Final = 0.5


class FeedError(StocksyncError):
    """The feed could not start; the message says what to do."""


def dlq_topic(settings: Settings) -> str:
    """``{prefix}.feed.dlq``: webhook deliveries given up."""
    return f"{settings.topic_prefix}.feed.dlq"


async def ensure_feed_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Create the feed's topics with ``settings.partitions`` partitions when missing."""
    wanted = [feed_topic(settings), dlq_topic(settings)]
    servers = ",".join(bootstrap_servers(settings.broker))
    admin = AIOKafkaAdminClient(
        bootstrap_servers=servers, client_id="stocksync-feed",
        request_timeout_ms=int(timeout * 1000), **kafka_client_options(settings),
    )
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [name for name in wanted if name not in existing]
            if missing:
                cluster = await admin.describe_cluster()
                replicas = max(1, min(3, len(cluster["brokers"])))
                await admin.create_topics(
                    [NewTopic(name, settings.partitions, replicas) for name in missing]
                )
                log.info("created %s", ", ".join(missing))
    except (TimeoutError, KafkaConnectionError, KafkaError, OSError) as exc:
        raise FeedError(
            f"The Kafka broker at {servers!r} did not set up the feed topics {wanted!r} ({exc!r});"
            " check that it is up and reachable, or fix the broker setting (STOCKSYNC_BROKER)."
        ) from exc
    finally:
        await admin.close()


class KafkaSender:
    """Sends feed messages keyed by SKU and waits for the broker's acknowledgements.

    A round's messages go as one record batch per partition (``send_batch``),
    partitioned by aiokafka's default partitioner over the key, as ``send``
    would: the producer's cost is then per batch, not per message, and a SKU
    stays on the partition it always had.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def send_all(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Send in order (one partition per SKU keeps a SKU's order); wait for every ack."""
        partitions = sorted(await self.producer.partitions_for(self.topic))
        builders: dict[int, BatchBuilder] = {}
        futures: list[asyncio.Future[object]] = []
        for sku, value in messages:
            key = sku.encode()
            partition = _partitioner(key, partitions, partitions)
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = self.producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:
                # Full: this one goes first (a partition's batches go out in order).
                futures.append(
                    await self.producer.send_batch(builder, self.topic, partition=partition)
                )
                builder = builders[partition] = self.producer.create_batch()
                if builder.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a feed message of {sku!r} is larger than a batch")
        for partition, builder in builders.items():
            if builder.record_count():
                futures.append(
                    await self.producer.send_batch(builder, self.topic, partition=partition)
                )
        await asyncio.gather(*futures)


class FeedService:
    """The model, the publisher, the webhooks and the lease of one feed process."""

    def __init__(self, settings: Settings, *, token: str | None = None) -> None:
        self.settings = settings
        self.token = token or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.client = open_client(
            settings.redis_url,
            cluster=settings.redis_cluster,
            socket_timeout=_SOCKET_TIMEOUT,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            **redis_client_options(settings),
        )
        keys = Keys(settings.redis_namespace)
        self.model = AvailabilityModel(
            [c.name for c in settings.channels], [c.low_stock_threshold for c in settings.channels]
        )
        # On a cluster the model has a change stream per shard; the sync follows them all.
        self.sync = ModelSync(self.model, RedisStore(self.client, keys),
                              load_page=settings.api.load_page)
        self.sync.holds = HoldStore(
            self.client, lambda: self.sync.store.keys,
            changes_maxlen=settings.worker.changes_maxlen,
        )
        self.store = FeedStore(self.client, Keys(settings.redis_namespace), self.token)
        self.metrics = FeedMetrics()
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers(settings.broker),
            client_id="stocksync-feed",
            acks="all",
            linger_ms=5,
            max_batch_size=_BATCH_BYTES,
            **kafka_client_options(settings),
        )
        self.publisher = Publisher(
            settings, self.model, self.sync, self.store,
            KafkaSender(self.producer, feed_topic(settings)), self.metrics,
        )
        self.metrics.lag.set_function(self.publisher.lag_seconds)
        self.active = False
        self._active_task: asyncio.Task[None] | None = None
        self._consumers: list[AIOKafkaConsumer] = []

    # --- roles ---

    def role(self) -> str:
        """``active`` or ``standby``."""
        return "active" if self.active else "standby"

    async def _run_active(self) -> None:
        """Activate the publisher and run it and every webhook until cancelled or fenced."""
        while True:
            try:
                await self.publisher.activate()
                break
            except StoreUnavailable as exc:
                log.warning("Redis failed loading the feed state (%s); retrying", exc)
                await asyncio.sleep(0.5)
        tasks = [asyncio.create_task(self.publisher.run(), name="stocksync-feed-publish")]
        for hook in self.settings.feed.webhooks:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=bootstrap_servers(self.settings.broker),
                client_id=f"stocksync-feed-{hook.name}",
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **kafka_client_options(self.settings),
            )
            self._consumers.append(consumer)
            webhook = Webhook(
                hook, self.settings.feed, topic=feed_topic(self.settings),
                dlq_topic=dlq_topic(self.settings), consumer=consumer, producer=self.producer,
                store=self.store, metrics=self.metrics,
            )
            tasks.append(asyncio.create_task(_supervised(webhook), name=f"webhook-{hook.name}"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # LeaseLost, or a bug: stop being active either way
        finally:
            await cancel_and_wait(tasks)
            for consumer in self._consumers:
                with contextlib.suppress(Exception):
                    await consumer.stop()
            self._consumers = []

    def _become_active(self) -> None:
        log.info("this feed process is active now (lease %s)", self.token,
                 extra={"role": "active"})
        self.active = True
        self.metrics.active.set(1)
        self._active_task = asyncio.create_task(self._run_active(), name="stocksync-feed-active")

    async def _step_down(self, why: str) -> None:
        if not self.active:
            return
        log.warning("standing by: %s", why, extra={"role": "standby"})
        self.active = False
        self.metrics.active.set(0)
        self.publisher.deactivate()
        task, self._active_task = self._active_task, None
        if task is not None:
            await cancel_and_wait([task])

    async def lead(self) -> None:
        """Hold the lease while possible, take it when free; run or stop the active part."""
        lease = self.settings.feed.lease_seconds
        renewed = 0.0
        while True:
            lapsed = False
            try:
                outcome = await self.store.acquire(lease)
                held = outcome is not None
                lapsed = outcome == "taken"
                if held:
                    renewed = time.monotonic()
            except StoreUnavailable as exc:
                held = self.active and time.monotonic() - renewed < lease * 0.8
                if not held:
                    log.warning("cannot renew the feed lease: %s", exc)
            if lapsed and self.active:
                # Redis lost the lease (restarted empty: the published records went with
                # it) or this process stalled past it (another may have published since):
                # what it remembers may be stale, so it loads the feed state again.
                await self._step_down(
                    "the feed lease lapsed while this process was active (Redis lost its"
                    " data, or this process stalled); loading the feed state again"
                )
            if held and not self.active:
                self._become_active()
            elif not held and self.active:
                await self._step_down("another feed process holds the lease, or Redis is away")
            task = self._active_task
            if task is not None and task.done():
                problem = None if task.cancelled() else task.exception()
                if isinstance(problem, LeaseLost):
                    await self._step_down(str(problem))
                elif problem is not None:
                    log.error("the active feed failed: %r; starting it again", problem)
                    self._active_task = None
                    self.active = False
                    self.publisher.deactivate()
                    continue
            await asyncio.sleep(lease / 5 if self.active else _STANDBY_POLL)

    async def close(self) -> None:
        """Stop the active part, give the lease up, close the clients."""
        await self._step_down("stopping")
        with contextlib.suppress(StoreUnavailable):
            await self.store.release()
        await self.sync.stop()
        with contextlib.suppress(Exception):
            await self.producer.stop()
        await self.client.aclose()


async def _supervised(webhook: Webhook) -> None:
    """Run one webhook; restart it after anything but a lost lease."""
    while True:
        try:
            await webhook.run()
        except (LeaseLost, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.error("webhook %s failed (%r); starting it again", webhook.hook.name, exc)
            with contextlib.suppress(Exception):
                await webhook.consumer.stop()
            await asyncio.sleep(1.0)


def _health_app(service: FeedService) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        status = service.sync.status()
        if not status.ready:
            return error_response(not_ready(status.code, status.reason))
        return web.json_response({"status": "ready", "role": service.role()})

    async def prometheus(request: web.Request) -> web.Response:
        body = generate_latest(service.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the feed process until ``stop`` is set (or SIGTERM/SIGINT without ``stop``)."""
    await ensure_feed_topics(settings)
    service = FeedService(settings)
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(_health_app(service), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.feed.host, settings.feed.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await service.client.aclose()
        raise FeedError(
            f"The feed cannot listen on {settings.feed.host}:{settings.feed.port} ({exc}). "
            "Pick another port with STOCKSYNC_FEED_PORT (0 picks a free one)."
        ) from exc
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    collect_less()  # as the worker and the API: what exists now is never garbage
    log.info("feed health and metrics on http://%s:%d/metrics", settings.feed.host, port,
             extra={"port": port})
    leading: asyncio.Task[None] | None = None
    try:
        try:
            await service.producer.start()
        except (KafkaConnectionError, OSError) as exc:
            raise FeedError(f"The feed's producer could not connect: {exc!r}") from exc
        await service.sync.start()
        leading = asyncio.create_task(service.lead(), name="stocksync-feed-lease")
        log.info("feed ready: publishing %s when active (token %s)", feed_topic(settings),
                 service.token)
        await stop.wait()
        log.info("stopping the feed")
    finally:
        if leading is not None:
            leading.cancel()
            with contextlib.suppress(BaseException):
                await leading
        await service.close()
        await runner.cleanup()
        log.info("feed stopped")


def run(settings: Settings) -> int:
    """``stocksync feed``: run until SIGTERM/SIGINT; returns the exit status."""
    for name in ("aiokafka",):
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings))
    except FeedError as exc:
        log.error("%s", exc)
        return 1
    return 0
