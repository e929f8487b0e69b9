"""Adjustments to faust-streaming's private parts, measured with 0.15.3 against Tansu.

- the consumer thread's aiokafka consumer waits :data:`FETCH_MAX_WAIT_MS` per
  fetch, not Faust's hard-coded 1,500 ms (``_create_worker_consumer``): Tansu
  holds a fetch for a good part of the wait even when records arrive meanwhile,
  so a trickle of events waited most of it at every hop;
- the consumer hands each message to the conductor without four Tasks
  (``_new_consumer_thread``, ``wait_first``; see :mod:`stocksync.compat.mode`):
  they were a large share of the worker's CPU with one-event messages;
- the app uses that consumer through its own transport (``_new_transport``);
- Faust's statistics sensor (``Monitor``) is left out: it keeps per-event
  statistics for Faust's web views, is called several times per message, and
  the worker serves its own metrics; without any sensor Faust warned "Missing
  sensor state for rebalance" on every rebalance, so the app hands it an empty
  state (``_rebalancing_sensor_state``);
- :func:`committed_offsets` reads the offsets the consumer last committed
  (``Consumer._committed_offset``), which Faust keeps but does not publish; the
  lag gauges of :mod:`stocksync.agents.lag` count from them.

The figures are in ``benchmarks/README.md``, "Figures behind design choices".
Written for faust-streaming 0.15.x (the project pins 0.15.3); on another
version :func:`app_class` returns the stock ``faust.App`` and says so once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import AppT
from mode import ServiceT

from stocksync.compat import aiokafka as compat_aiokafka
from stocksync.compat import mode as compat_mode
from stocksync.compat import supported

__all__ = [
    "ACTIVE",
    "FETCH_MAX_WAIT_MS",
    "App",
    "app_class",
    "check",
    "close_unused_consumer_loop",
    "committed_offsets",
]

DISTRIBUTION = "faust-streaming"
LOWEST = "0.15.3"
BELOW = "0.16"

#: How long a fetch may wait at the broker for data (Faust hard-codes 1,500 ms).
FETCH_MAX_WAIT_MS = 50


def check() -> bool:
    """Tell whether the installed Faust is one these adjustments were written for (logs if not)."""
    return supported(
        DISTRIBUTION,
        LOWEST,
        BELOW,
        what="the stock faust.App: fetches wait 1.5 s, four Tasks per message, "
        "Faust's statistics sensor, consumer lag counted from the fetch position",
    )


#: Whether the adjustments are in force (decided once, at import).
ACTIVE = check()


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with a short fetch wait."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        compat_aiokafka.shorten_fetch_wait(consumer, FETCH_MAX_WAIT_MS)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, on :class:`_ConsumerThread`, without four Tasks per message.

    Faust's fetch loop hands every message to the conductor as
    ``wait_first(callback(message), suspend_flow.wait())``; delivering a message
    almost never waits (it decodes the raw bytes and puts the event on the
    agent's queue), so :func:`~stocksync.compat.mode.wait_first_in_place` runs
    it in place.
    """

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> compat_mode.WaitResults:
        # wait_first_in_place, inlined: this runs for every message, and one coroutine
        # and a bound super() less per message is measurable on one-event messages.
        done, rest = compat_mode.start_in_place(
            self, coros, timeout, self.suspend_flow.is_set()
        )
        if done is not None:
            return done
        return await super().wait_first(*rest, timeout=timeout)


class _Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`_Consumer`."""

    Consumer = _Consumer


#: Handed to Faust as the rebalance's sensor state when no sensor is installed.
_NO_SENSORS: dict[Any, Any] = {"sensors": ()}


class App(faust.App):
    """faust.App with :class:`_Consumer`, and without Faust's statistics sensor."""

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        dependencies = super().on_init_dependencies()
        self.sensors.remove(self.monitor)
        return dependencies

    def on_rebalance_start(self) -> None:
        super().on_rebalance_start()
        if not self._rebalancing_sensor_state:
            # Faust warns when the state is empty, which it always is without sensors.
            self._rebalancing_sensor_state = _NO_SENSORS

    def _new_transport(self) -> Any:
        url = self.conf.broker_consumer[0]
        if url.scheme == "kafka":
            return _Transport(self.conf.broker_consumer, self)
        return super()._new_transport()


def app_class() -> type[faust.App]:
    """The app class to build: :class:`App`, or the stock ``faust.App`` on another Faust."""
    return App if ACTIVE else faust.App


def close_unused_consumer_loop(app: AppT) -> None:
    """Close the consumer thread's loop when the thread never ran to close it itself.

    Faust creates that loop with the consumer; a worker that failed to start
    leaves it open, and it would be reported as an unclosed event loop.
    """
    consumer = getattr(app, "_consumer", None)
    thread = getattr(consumer, "_thread", None)
    loop = getattr(thread, "thread_loop", None)
    if isinstance(loop, asyncio.AbstractEventLoop) and not (loop.is_running() or loop.is_closed()):
        loop.close()


def committed_offsets(consumer: Any) -> Mapping[Any, int | None] | None:
    """The offsets ``consumer`` (Faust's) last committed per partition, or None off 0.15.x.

    Faust fills them from the broker when partitions are assigned and after each of
    its commits, and drops a partition's when it is revoked; a partition with
    nothing committed (or committed at 0, which Faust keeps as None) is absent or None.
    The mapping is read on the worker's loop, where Faust writes it; this copies it.
    """
    if not ACTIVE:
        return None
    found = getattr(consumer, "_committed_offset", None)
    if not isinstance(found, Mapping):
        return None
    return dict(found)
