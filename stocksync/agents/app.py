"""The Faust app factory, raw topics, and a worker started and stopped from code.

Every choice below was measured with faust-streaming 0.15.3 against Tansu
(the figures are in ``benchmarks/README.md``, "Figures behind design choices"):

- ``broker_session_timeout=6``, ``broker_rebalance_timeout=6`` and
  ``broker_heartbeat_interval=1``: a worker has its partitions a few seconds
  after ``start_worker`` is called, and so does a second one joining the group
  (the first then holds half the partitions); Faust's defaults take half a
  minute.
- ``stream_wait_empty=False``: the default waits for the current event of every
  agent before stopping and can hang shutdown forever; with it off a stop is
  prompt, even with an agent stuck inside an event. Events being processed are
  redelivered, which idempotent effects absorb.
- raw key and value serializers, app-wide and on every topic: ``value_type=bytes``
  alone still goes through the app's default (json) serializer.
- ``cython_optimizations=True`` (when the extensions are built),
  ``broker_max_poll_records=2000`` and ``consumer_max_fetch_size`` 8 MiB move more
  events per poll; the cost of Faust is per message, so these help only a little
  for single-event messages and a lot for bulk ones.
- the web server is off (the worker serves its own /metrics), there are no
  tables (durable state is in Redis), and Faust declares no topics
  (``topic_allow_declare=False``, no leader topic):
  :func:`stocksync.agents.topics.ensure_topics`
  creates them first, because a broker auto-creates a topic with its own
  default partition count as soon as a client names it.
- Faust's worker installs SIGUSR2 -> pdb; this worker never does.

Everything that reaches into Faust's, mode's or aiokafka's private parts (the
fetch wait, the consumer's in-place delivery, the missing statistics sensor,
the crash hook) lives in :mod:`stocksync.compat`, with a version check.

Run workers on :func:`new_event_loop` (uvloop: more messages per second than the
default loop); it also sets the policy, which is the only way to reach
the loop of the Kafka consumer thread Faust starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import faust
import uvloop
from faust.types import AppT

from stocksync.compat import faust as compat_faust
from stocksync.compat import mode as compat_mode
from stocksync.compat.faust import FETCH_MAX_WAIT_MS, App
from stocksync.config.connections import faust_broker_credentials
from stocksync.config.settings import Settings
from stocksync.errors import StocksyncError

__all__ = [
    "CONSUMER_MAX_FETCH_SIZE",
    "EXIT_SHUTDOWN_DEADLINE",
    "FETCH_MAX_WAIT_MS",
    "MAX_POLL_RECORDS",
    "App",
    "Worker",
    "WorkerStartError",
    "app_options",
    "create_app",
    "cython_available",
    "exit_deadline",
    "new_event_loop",
    "raw_topic",
    "start_worker",
    "stop_worker",
    "use_uvloop",
]

logger = logging.getLogger(__name__)

MAX_POLL_RECORDS = 2000
CONSUMER_MAX_FETCH_SIZE = 8 * 1024 * 1024
#: Exit status of a process whose stop outlasted the shutdown timeout (nothing more committed).
EXIT_SHUTDOWN_DEADLINE = 75
#: Share of the shutdown timeout the orderly stop may take; the rest is for leaving.
_ORDERLY_SHARE = 0.8


class WorkerStartError(StocksyncError):
    """A Faust worker did not get its partitions within the allowed time."""


def cython_available() -> bool:
    """Tell whether Faust's compiled stream iterator is installed."""
    try:
        import faust._cython.streams  # noqa: F401
    except ImportError:
        return False
    return True


def use_uvloop() -> None:
    """Make uvloop the event loop policy of this process.

    Faust runs the Kafka consumer in a thread of its own, on a loop it creates
    with ``asyncio.new_event_loop()``: only the policy reaches that loop.
    """
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def new_event_loop() -> asyncio.AbstractEventLoop:
    """Install uvloop as the policy (see :func:`use_uvloop`) and return a new loop from it."""
    use_uvloop()
    return asyncio.new_event_loop()


def app_options(
    settings: Settings,
    *,
    worker_id: str | None = None,
    datadir: str | Path | None = None,
) -> dict[str, Any]:
    """The Faust settings of the worker's app, as keyword arguments of :class:`faust.App`."""
    client_id = f"stocksync-{worker_id}" if worker_id else "stocksync"
    options: dict[str, Any] = {
        "broker": settings.broker,
        "broker_client_id": client_id,
        "datadir": str(datadir or Path(tempfile.gettempdir()) / "stocksync-faust"),
        "autodiscover": False,
        "web_enabled": False,
        "topic_allow_declare": False,
        "topic_disable_leader": True,
        "topic_partitions": settings.partitions,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": 6.0,
        "broker_rebalance_timeout": 6.0,
        "broker_heartbeat_interval": 1.0,
        "broker_max_poll_records": MAX_POLL_RECORDS,
        "consumer_max_fetch_size": CONSUMER_MAX_FETCH_SIZE,
        "stream_wait_empty": False,
        "cython_optimizations": cython_available(),
        "worker_redirect_stdouts": False,
    }
    credentials = faust_broker_credentials(settings)  # None: PLAINTEXT, Faust's default
    if credentials is not None:
        options["broker_credentials"] = credentials
    return options


def create_app(
    settings: Settings,
    *,
    worker_id: str | None = None,
    datadir: str | Path | None = None,
    **overrides: Any,
) -> faust.App:
    """Create the Faust app for ``settings``, with the settings measured for Tansu and Kafka.

    The consumer group is ``settings.worker.group_id``; ``worker_id`` only names
    this process's Kafka client. ``datadir`` is where Faust keeps its (empty,
    since there are no tables) directories; by default a shared temp directory,
    so nothing is written to the working directory. ``overrides`` are passed to
    :class:`faust.App` last (tests use them).
    """
    options = app_options(settings, worker_id=worker_id, datadir=datadir)
    options.update(overrides)
    return compat_faust.app_class()(settings.worker.group_id, **options)


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """Declare topic ``name`` with raw bytes keys and values; empty values reach the agent."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        # A message with a null value is handed to the agent (value None), which
        # can dead-letter it, instead of being dropped by the decoder.
        allow_empty=True,
    )


def _broker_text(app: AppT) -> str:
    """The app's broker URLs as one string, for error messages."""
    return ";".join(str(url) for url in app.conf.broker)


class Worker(compat_mode.StopsWhenCrashed, faust.Worker):
    """A Faust worker for use from code: quiet, bounded stop, signals handled only if asked."""

    def __init__(
        self,
        app: faust.App,
        *,
        loop: asyncio.AbstractEventLoop,
        handle_signals: bool = False,
        shutdown_timeout: float = 15.0,
        hard_exit: bool = False,
    ) -> None:
        super().__init__(
            app,
            loop=loop,
            daemon=False,
            override_logging=False,
            redirect_stdouts=False,
            quiet=True,
        )
        self.spinner = None  # the terminal spinner writes escape codes to stdout
        self.handle_signals = handle_signals
        self.stop_timeout = shutdown_timeout
        #: Whether a stop also arms :func:`exit_deadline` (a worker that owns its process).
        self.hard_exit = hard_exit
        #: Set once :func:`stop_worker` has finished (or given up) stopping this worker.
        self.finished = asyncio.Event()
        self._stop_task: asyncio.Task[float] | None = None

    def install_signal_handlers(self) -> None:
        """Route SIGTERM and SIGINT to a bounded stop when asked; never install SIGUSR2 -> pdb."""
        if not self.handle_signals:
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._on_stop_signal, signum)

    def _on_stop_signal(self, signum: signal.Signals) -> None:
        logger.info("Received %s: stopping the worker", signum.name)
        self._begin_stop()

    def _begin_stop(self) -> None:
        if self._stop_task is None and not self.finished.is_set():
            if self.hard_exit:
                exit_deadline(self.stop_timeout)
            orderly = self.stop_timeout * _ORDERLY_SHARE
            self._stop_task = self.loop.create_task(stop_worker(self, orderly))

    def on_crashed(self, reason: BaseException) -> None:
        """Stop a crashed worker, so that wait_finished() returns and crash_reason tells why."""
        # A crashed Faust app stops consuming but keeps the process alive.
        logger.error("The Faust worker crashed (%r); stopping it", reason)
        self.loop.call_soon_threadsafe(self._begin_stop)

    async def wait_finished(self) -> None:
        """Wait until the worker was stopped: by :func:`stop_worker`, a signal, or a crash."""
        await self.finished.wait()


_deadline_lock = threading.Lock()
_deadline: threading.Timer | None = None


def exit_deadline(seconds: float) -> None:
    """Exit the process in ``seconds`` unless it has exited by then; armed once per process.

    Faust's stop can hang (a consumer stuck in ``Stopping...`` for minutes was seen,
    and its thread keeps the interpreter from exiting), so the shutdown timeout is
    held by a timer thread, not by the event loop.
    """
    global _deadline
    with _deadline_lock:
        if _deadline is not None:
            return
        _deadline = threading.Timer(seconds, _exit_now, args=(seconds,))
        _deadline.daemon = True
        _deadline.start()


def _exit_now(seconds: float) -> None:
    logger.critical(
        "The worker did not stop within its shutdown timeout of %.1f s; exiting now "
        "(status %d). Uncommitted events are redelivered on restart.",
        seconds,
        EXIT_SHUTDOWN_DEADLINE,
        extra={"exit_status": EXIT_SHUTDOWN_DEADLINE},
    )
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_SHUTDOWN_DEADLINE)


async def start_worker(
    app: faust.App,
    loop: asyncio.AbstractEventLoop | None = None,
    *,
    timeout: float = 60.0,
    handle_signals: bool = False,
    shutdown_timeout: float = 15.0,
    hard_exit: bool = False,
) -> Worker:
    """Start a worker for ``app`` and return once its partitions are assigned.

    ``loop`` defaults to the running loop. With ``handle_signals`` SIGTERM and
    SIGINT stop the worker within ``shutdown_timeout`` seconds (await
    :meth:`Worker.wait_finished`); otherwise the process keeps its own handlers.
    With ``hard_exit`` (a worker that owns its process) any stop also arms
    :func:`exit_deadline`: the process exits ``shutdown_timeout`` seconds later
    if it has not by then.
    Raises :class:`WorkerStartError`, after stopping the worker, if it is not
    ready within ``timeout`` seconds.
    """
    worker = Worker(
        app,
        loop=loop or asyncio.get_running_loop(),
        handle_signals=handle_signals,
        shutdown_timeout=shutdown_timeout,
        hard_exit=hard_exit,
    )
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await worker.start()
    except TimeoutError as exc:
        await stop_worker(worker, shutdown_timeout)
        raise WorkerStartError(
            f"The Faust worker of group {app.conf.id!r} got no partitions within {timeout:.0f} s "
            f"from {_broker_text(app)!r}. Check that the broker is up and its topics exist."
        ) from exc
    except Exception as exc:
        await stop_worker(worker, shutdown_timeout)
        raise WorkerStartError(
            f"The Faust worker of group {app.conf.id!r} could not start against "
            f"{_broker_text(app)!r}: {exc!r}. Check that the broker is up and reachable."
        ) from exc
    except BaseException:
        await stop_worker(worker, shutdown_timeout)
        raise
    if worker.crash_reason is not None:
        await stop_worker(worker, shutdown_timeout)
        raise WorkerStartError(
            f"The Faust worker of group {app.conf.id!r} crashed while starting: "
            f"{worker.crash_reason!r}."
        ) from worker.crash_reason
    logger.info("Faust worker ready in %.1f s", time.monotonic() - started)
    return worker


async def stop_worker(worker: faust.Worker, timeout: float = 15.0) -> float:
    """Stop ``worker`` within ``timeout`` seconds and return how long it took."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await worker.stop()
    except TimeoutError:
        logger.error("The Faust worker did not stop within %.1f s; abandoning it", timeout)
    finally:
        compat_faust.close_unused_consumer_loop(worker.app)
        if isinstance(worker, Worker):
            worker.finished.set()
    return time.monotonic() - started
