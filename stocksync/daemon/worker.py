"""``stocksync worker``: topics, Redis, the Faust agents and a small health/metrics server.

Start-up is all or nothing: topics are created (or found) first, Redis must
answer, then the Faust worker joins its consumer group. The worker's own
aiohttp server answers ``/healthz``, ``/readyz`` and ``/metrics`` on
``worker.port`` (0 picks a free port, logged at start). ``/readyz`` is 503,
with the reason, while starting, while Redis does not answer and while the
broker is unreachable (:mod:`stocksync.daemon.brokerwatch`, which also
recreates topics that disappeared). ``/metrics`` includes the lag of every
assigned partition, read every few seconds (:mod:`stocksync.agents.lag`).
SIGTERM and SIGINT stop it within ``worker.shutdown_timeout``, hard: past it
the process exits whatever Faust is doing
(:data:`~stocksync.agents.app.EXIT_SHUTDOWN_DEADLINE`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from stocksync.agents.app import create_app, new_event_loop, start_worker, stop_worker
from stocksync.agents.incarnations import KafkaRecordReader, TopicIncarnations
from stocksync.agents.lag import ConsumerLag
from stocksync.agents.metrics import WorkerMetrics
from stocksync.agents.streams import WorkerStages, register
from stocksync.agents.topics import TopicSetupError, ensure_topics, message_limit, topic_names
from stocksync.api.errors import NotReady, Rebuilding, error_response, json_errors, not_ready
from stocksync.compat import aiokafka as compat_aiokafka
from stocksync.config.addresses import redacted_url
from stocksync.config.connections import redis_client_options
from stocksync.config.settings import Settings
from stocksync.daemon.brokerwatch import BrokerWatch, ClientLogGate
from stocksync.daemon.collector import collect_less
from stocksync.daemon.healing import Healer
from stocksync.errors import StocksyncError
from stocksync.ops.rebuild import HEARTBEAT_FRESH_SECONDS
from stocksync.readmodel import core
from stocksync.store import RedisStore, StoreUnavailable
from stocksync.store.incarnations import IncarnationRecords
from stocksync.store.layout import Keys

__all__ = ["WorkerError", "quiet_libraries", "run", "serve"]

log = logging.getLogger("stocksync.worker")


class WorkerError(StocksyncError):
    """The worker could not start; the message says what to do."""


async def _connect_redis(settings: Settings, timeout: float = 30.0) -> RedisStore:
    store = RedisStore.from_url(
        settings.redis_url,
        Keys(settings.redis_namespace),
        client_options=redis_client_options(settings),
        topology=core.topology_of(settings),
        cluster=settings.redis_cluster,
        changes_maxlen=settings.worker.changes_maxlen,
        state_ttl_seconds=settings.worker.state_ttl_days * 86_400,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        try:
            await store.ping()
            # After a rebuild the live model is a newer generation of the key space.
            namespace = await store.resolve()
            log.info("read model in Redis key space %s:* (generation %s)", namespace,
                     store.generation)
            return store
        except (StoreUnavailable, RedisError, OSError) as exc:
            if time.monotonic() >= deadline:
                await store.close()
                raise WorkerError(
                    f"Redis at {redacted_url(settings.redis_url)!r} did not answer within "
                    f"{timeout:.0f} s ({exc}). Start Redis or fix redis_url "
                    "(STOCKSYNC_REDIS_URL)."
                ) from exc
            log.warning("waiting for Redis at %s: %s", redacted_url(settings.redis_url), exc)
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)


#: Seconds between two heartbeats of a worker in Redis.
HEARTBEAT_SECONDS: Final = 3.0


async def _keep_heartbeat(store: RedisStore, worker_id: str) -> None:
    """Record in Redis, every few seconds, that this worker runs (``stocksync rebuild`` asks)."""
    while True:
        try:
            await store.beat(worker_id, HEARTBEAT_FRESH_SECONDS)
        except StoreUnavailable as exc:
            log.debug("heartbeat failed: %s", exc)
        await asyncio.sleep(HEARTBEAT_SECONDS)


def _not_ready(message: str) -> web.Response:
    return error_response(NotReady(message, {"Retry-After": "1"}))


def _health_app(
    stages: WorkerStages,
    state: dict[str, bool],
    healer: Healer | None = None,
    watch: BrokerWatch | None = None,
) -> web.Application:
    metrics = stages.metrics

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if not state.get("ready"):
            return _not_ready("the worker is starting")
        if healer is not None and healer.healing:
            return error_response(
                not_ready(Rebuilding.code, "Redis lost the model; rebuilding it from the topics")
            )
        problem = watch.problem() if watch is not None else None
        if problem is not None:
            return _not_ready(problem)
        try:
            await asyncio.wait_for(stages.store.ping(), 1.0)
        except (StoreUnavailable, TimeoutError):
            return _not_ready("Redis is not answering")
        return web.json_response({"status": "ready"})

    async def prometheus(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app


async def serve(
    settings: Settings,
    *,
    handle_signals: bool = True,
    metrics: WorkerMetrics | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the worker until it is stopped (a signal, or cancellation of this coroutine).

    ``metrics`` lets a caller in the same process watch the worker (benchmarks);
    ``ready`` is set once the worker has its partitions.
    """
    names = topic_names(settings)
    try:
        counts = await ensure_topics(settings.broker, settings)
    except TopicSetupError as exc:
        raise WorkerError(str(exc)) from exc
    log.info(
        "topics ready: %s",
        ", ".join(f"{name} ({count} partitions)" for name, count in counts.items()),
    )
    max_message_bytes = await message_limit(settings, names.owned)
    store = await _connect_redis(settings)
    metrics = metrics or WorkerMetrics()
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    healer = Healer(settings, store, worker_id=worker_id, metrics=metrics)
    incarnations = TopicIncarnations(
        records=IncarnationRecords(store.client, store.keys),
        reader=KafkaRecordReader(settings),
        topics=names.sources,
        metrics=metrics,
    )
    stages = WorkerStages(
        settings=settings,
        topics=names,
        effects_partitions=counts[names.effects],
        store=store,
        metrics=metrics,
        heal=healer,
        incarnations=incarnations,
        max_message_bytes=max_message_bytes,
    )

    def _healed() -> None:
        stages.applier.forget()
        incarnations.forget()  # the rebuild stored the numbers its watermarks carry

    healer.on_healed = _healed
    heartbeat = asyncio.create_task(_keep_heartbeat(store, worker_id), name="stocksync-heartbeat")
    if store.generation is None:
        log.warning("no model is live under %s:* (a new deployment, or Redis lost it)",
                    store.namespace)
        await healer()
    # Only this worker creates topics, with the configured partition counts.
    compat_aiokafka.forbid_topic_auto_creation()
    app = create_app(settings)
    register(app, stages)
    if not incarnations.watch_resets():
        log.warning("offset resets while running go unnoticed (see stocksync.compat.aiokafka)")

    async def _recheck(sender: object, /, *args: object, **kwargs: object) -> None:
        incarnations.forget()

    app.on_partitions_revoked.connect(_recheck)
    lag = ConsumerLag(app, metrics)

    async def _drop_lag(sender: object, /, *args: object, **kwargs: object) -> None:
        if args and isinstance(args[0], set | frozenset):
            lag.revoked(args[0])  # Faust sends the revoked partitions

    app.on_partitions_revoked.connect(_drop_lag)
    lagging: asyncio.Task[None] | None = None
    watch = BrokerWatch(settings, metrics)
    gate = ClientLogGate(watch)
    gate.install()
    watching = asyncio.ensure_future(watch.run())
    state = {"ready": False}
    runner = web.AppRunner(_health_app(stages, state, healer, watch), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.worker.host, settings.worker.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        heartbeat.cancel()
        await _stop_watching(watching, gate, incarnations)
        await runner.cleanup()
        await store.close()
        raise WorkerError(
            f"The worker cannot listen on {settings.worker.host}:{settings.worker.port} ({exc}). "
            "Pick another port with STOCKSYNC_WORKER_PORT (0 picks a free one)."
        ) from exc
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    log.info(
        "worker health and metrics on http://%s:%d/metrics",
        settings.worker.host,
        port,
        extra={"port": port},
    )
    worker = None
    try:
        worker = await start_worker(
            app,
            handle_signals=handle_signals,
            shutdown_timeout=settings.worker.shutdown_timeout,
            hard_exit=handle_signals,
        )
        gate.install()  # again: loggers the start created
        collect_less()
        lagging = asyncio.create_task(lag.run(), name="stocksync-consumer-lag")
        state["ready"] = True
        if ready is not None:
            ready.set()
        log.info("worker ready: consuming %s", ", ".join(names.sources))
        await worker.wait_finished()
    finally:
        state["ready"] = False
        if lagging is not None:
            lagging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lagging
        if worker is not None and not worker.finished.is_set():
            await stop_worker(worker, settings.worker.shutdown_timeout)
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        with contextlib.suppress(StoreUnavailable):
            await store.forget_worker(worker_id)
        await _stop_watching(watching, gate, incarnations)
        await runner.cleanup()
        await stages.holds.close()
        await store.close()
        log.info("worker stopped")


async def _stop_watching(
    watching: asyncio.Future[None], gate: ClientLogGate, incarnations: TopicIncarnations
) -> None:
    watching.cancel()
    with contextlib.suppress(BaseException):
        await watching
    gate.remove()
    incarnations.close()
    with contextlib.suppress(StoreUnavailable):
        await asyncio.wait_for(incarnations.flush(), 2.0)


#: Libraries whose start-up chatter hides our own lines at info level.
_CHATTY = ("faust", "mode", "aiokafka")


def quiet_libraries() -> None:
    """Show the chatty libraries' warnings only, unless debug logging was asked for."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in _CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """A library thread that ends on an exception: one log line, not a bare traceback."""
    name = args.thread.name if args.thread is not None else "?"
    log.warning(
        "thread %s ended on %s: %s",
        name,
        args.exc_type.__name__,
        args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
        if args.exc_value is not None
        else None,
    )


def run(settings: Settings) -> int:
    """``stocksync worker``: run until SIGTERM/SIGINT; returns the exit status."""
    quiet_libraries()
    # Faust's consumer thread can die on a CancelledError when it stops with the broker gone.
    threading.excepthook = _log_thread_exception
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(settings))
    except WorkerError as exc:
        log.error("%s", exc)
        return 1
    except Exception as exc:
        from stocksync.agents.app import WorkerStartError

        if isinstance(exc, WorkerStartError):
            log.error("%s", exc)
            return 1
        raise
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return 0
