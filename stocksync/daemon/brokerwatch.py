"""The worker's view of its Kafka broker: readiness, a quiet log, and topics recreated.

While the broker is unreachable, aiokafka logs every failed connect, metadata
refresh, fetch and coordinator lookup at ERROR: about 77 lines a second with
one worker, from ``aiokafka``, ``aiokafka.consumer.fetcher`` and
``aiokafka.consumer.group_coordinator``. :class:`BrokerWatch` makes the outage
one fact instead:

- it asks the broker every few seconds (every second during an outage, and at
  once when a client logs a connection error) for the topics, creating any
  that are missing (a broker that came back empty); :meth:`BrokerWatch.problem`
  is then the reason ``/readyz`` answers 503;
- it logs the outage once, then every :data:`REPORT_EVERY` seconds, and once
  when the broker is back, with how many client lines it held back;
- :class:`ClientLogGate` is the one place the client libraries' warnings and
  errors pass through: during an outage aiokafka's (and any about the
  connection) are counted, not written; otherwise each distinct message is
  written at most once per :data:`REPORT_EVERY` seconds, with the count of the
  repeats it held back.

Missing topics are only ever created by this worker, with the configured
partition counts: :func:`stocksync.compat.aiokafka.forbid_topic_auto_creation`
stops the consumer's own metadata requests from having the broker create them
with its defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable

from stocksync.agents.metrics import WorkerMetrics
from stocksync.agents.topics import TopicSetupError, ensure_topics
from stocksync.config.settings import Settings

__all__ = ["GATED_LOGGERS", "REPORT_EVERY", "BrokerWatch", "ClientLogGate"]

log = logging.getLogger("stocksync.broker")

#: Seconds between two log lines about the same outage or the same client message.
REPORT_EVERY = 30.0
#: Logger name prefixes whose warnings and errors go through :class:`ClientLogGate`.
GATED_LOGGERS = ("aiokafka", "faust", "mode", "stocksync.compat")

#: Client messages that mean the broker is not reachable (they wake the watch at once).
_UNREACHABLE = re.compile(
    r"Connection refused|Unable connect|Unable to (update|request) metadata|NodeNotReady|"
    r"KafkaConnectionError|Connection at .* closed|coordinator dead|Coordinator Request failed|"
    r"Failed fetch messages|RequestTimedOut|Connect call failed",
    re.IGNORECASE,
)

#: ``ensure_topics`` as the watch calls it; tests give another.
Probe = Callable[[Settings, list[str]], Awaitable[dict[str, int]]]


async def _ensure(settings: Settings, created: list[str]) -> dict[str, int]:
    return await ensure_topics(settings.broker, settings, timeout=5.0, created=created)


class BrokerWatch:
    """Knows whether the broker answers, says so in the log sparingly, recreates lost topics."""

    def __init__(
        self,
        settings: Settings,
        metrics: WorkerMetrics | None = None,
        *,
        probe: Probe = _ensure,
        interval: float = 5.0,
        down_interval: float = 1.0,
        report_every: float = REPORT_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.probe = probe
        self.interval = interval
        self.down_interval = down_interval
        self.report_every = report_every
        self.clock = clock
        #: When the current outage began (monotonic), None while the broker answers.
        self.down_since: float | None = None
        self.reason = ""
        #: Client log lines held back during the current outage.
        self.held_back = 0
        self.last_client_error = ""
        #: Called with the topics recreated after they disappeared.
        self.on_recreated: Callable[[list[str]], None] | None = None
        self._reported = 0.0
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self.metrics.broker_up.set(1)

    @property
    def down(self) -> bool:
        """Whether the broker is known to be unreachable now."""
        return self.down_since is not None

    def problem(self) -> str | None:
        """Why the worker is not ready because of the broker, or None."""
        if self.down_since is None:
            return None
        seconds = self.clock() - self.down_since
        return f"the Kafka broker is unreachable since {seconds:.0f} s: {self.reason}"

    def suspect(self, message: str) -> None:
        """A client reported a connection problem: probe now (any thread may call this)."""
        with self._lock:
            self.last_client_error = message
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def held(self, message: str) -> None:
        """Count a client line held back during the outage (any thread may call this)."""
        with self._lock:
            self.held_back += 1
            self.last_client_error = message

    async def check(self) -> bool:
        """Probe the broker once, update the state and the log; True when it answered."""
        created: list[str] = []
        try:
            await self.probe(self.settings, created)
        except TopicSetupError as exc:
            self._down(str(exc))
            return False
        except (OSError, TimeoutError) as exc:
            self._down(f"{type(exc).__name__}: {exc}")
            return False
        self._up(created)
        return True

    async def run(self) -> None:
        """Probe until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            while True:
                await self.check()
                wait = self.down_interval if self.down else self.interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                self._wake.clear()
        finally:
            self._loop = self._wake = None

    def _down(self, reason: str) -> None:
        now = self.clock()
        self.reason = reason
        if self.down_since is None:
            self.down_since = self._reported = now
            self.metrics.broker_up.set(0)
            log.error(
                "The Kafka broker is unreachable: %s. The worker waits for it and answers 503 "
                "on /readyz meanwhile; it says so again every %.0f s.",
                reason,
                self.report_every,
                extra={"broker_down": True},
            )
        elif now - self._reported >= self.report_every:
            self._reported = now
            with self._lock:
                held, last = self.held_back, self.last_client_error
            log.error(
                "The Kafka broker is still unreachable after %.0f s: %s (%d client log lines "
                "held back, the last: %s)",
                now - self.down_since,
                reason,
                held,
                last or "none",
                extra={"broker_down": True, "held_back": held},
            )

    def _up(self, created: list[str]) -> None:
        if self.down_since is not None:
            with self._lock:
                held, self.held_back = self.held_back, 0
            log.warning(
                "The Kafka broker answers again after %.0f s (%d client log lines held back)",
                self.clock() - self.down_since,
                held,
                extra={"broker_down": False, "held_back": held},
            )
            self.down_since = None
            self.reason = ""
            self.metrics.broker_up.set(1)
        if created:
            log.warning(
                "Topics %s had disappeared from the broker and were created again with %d "
                "partitions; the worker goes on reading them without a restart",
                ", ".join(created),
                self.settings.partitions,
                extra={"topics": created},
            )
            if self.on_recreated is not None:
                self.on_recreated(created)


class ClientLogGate(logging.Filter):
    """The one place the client libraries' warnings and errors pass through (see the module)."""

    def __init__(self, watch: BrokerWatch, *, every: float = REPORT_EVERY) -> None:
        super().__init__()
        self.watch = watch
        self.every = every
        self._last: dict[tuple[str, str], float] = {}
        self._repeats: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._installed: list[logging.Logger] = []

    def filter(self, record: logging.LogRecord) -> bool:
        """Hold back a client line during an outage or when it repeats within the period."""
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        watch = self.watch
        if watch.down and (record.name.startswith("aiokafka") or _UNREACHABLE.search(message)):
            watch.held(message)
            return False
        if _UNREACHABLE.search(message):
            watch.suspect(message)
        key = (record.name, str(record.msg))
        now = watch.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every:
                self._repeats[key] = self._repeats.get(key, 0) + 1
                return False
            self._last[key] = now
            repeats = self._repeats.pop(key, 0)
        if repeats:
            record.repeats_held_back = repeats
        return True

    def install(self, prefixes: Iterable[str] = GATED_LOGGERS) -> None:
        """Put the gate on every logger under ``prefixes`` (again after imports made more)."""
        wanted = tuple(prefixes)
        names = [
            name
            for name in list(logging.root.manager.loggerDict)
            if any(name == p or name.startswith(p + ".") for p in wanted)
        ]
        for name in [*wanted, *names]:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)
                self._installed.append(logger)

    def remove(self) -> None:
        """Take the gate off every logger it was put on."""
        for logger in self._installed:
            logger.removeFilter(self)
        self._installed.clear()
