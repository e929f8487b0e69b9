"""``stocksync rehearse``: a peak rehearsal against a deployment, judged by a profile's SLOs.

Both sides at once, for ``--duration`` seconds, along the profile's ramp:
stock, order and return events go to the source topics (valid events only,
chosen so no position can be oversold: orders reserve against the channel and
are cancelled, returns are received and restocked, stock only grows or is
counted again), and single, batch and hold requests go to the API (every
granted hold is released a moment later). Targets come from the usual
settings (or the running dev setup) only, and the load is bounded in rate,
in requests in flight and in time.

Measured each second: events and requests sent, event-to-served freshness,
API latency per endpoint, errors by code, holds granted and refused, and, from
the worker's ``/metrics``, dead letters and oversold positions. Freshness is
measured by tracers: each owns a SKU of its own, sends a snapshot that changes
it and polls with the ETag it last saw until the API serves the new version,
then goes again; so it rides the same topics, worker and Redis as the load.
Latency goes into HdrHistograms (per endpoint for the run, and per second).

The report (``report.html``, the plots as PNG, ``summary.json``) is written by
:mod:`stocksync.ops.report`; the exit status is 1 when an SLO fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import re
import sys
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import msgspec
from aiokafka.errors import KafkaError
from hdrh.histogram import HdrHistogram

from stocksync.agents.topics import topic_names
from stocksync.codecs.events import (
    CreatedLine,
    InspectedLine,
    OrderCancelled,
    OrderCreated,
    ReceivedLine,
    ReturnInspected,
    ReturnReceived,
    StockAdjusted,
    StockSnapshot,
)
from stocksync.config.devsetup import DevSetup
from stocksync.config.settings import Settings
from stocksync.ops.access import OperateError, open_producer
from stocksync.ops.client import Answer, ApiClient, api_url, read_token
from stocksync.ops.profile import MAX_DURATION, Profile, load_profile

__all__ = [
    "ENDPOINTS",
    "EVENT_KINDS",
    "REHEARSE_SOURCE",
    "Rehearsal",
    "Second",
    "latency_histogram",
    "run",
    "worker_url",
]

#: The ``source`` of every event the rehearsal sends.
REHEARSE_SOURCE: Final = "stocksync-rehearse"
EVENT_KINDS: Final = ("stock", "orders", "returns")
#: Endpoints timed, in report order (``release`` follows every granted hold).
ENDPOINTS: Final = ("single", "batch", "hold", "release")
#: Requests in flight at most; an action due while all are busy is counted, not sent.
MAX_IN_FLIGHT: Final = 256
_TICK: Final = 0.05
_TRACERS: Final = 2
_TRACE_POLL: Final = 0.01
_TRACE_GIVE_UP: Final = 30.0
_SEED_CHUNK: Final = 1000
_SEED_TIMEOUT: Final = 60.0
_ON_HAND: Final = 1000
#: What a scarce SKU has at each node: a few holds take it all.
_SCARCE: Final = 1
_HOLD_TTL: Final = 30
_SETTLE: Final = 2.0
_HIGHEST_US: Final = 60_000_000


def latency_histogram(digits: int = 3) -> HdrHistogram:
    """A histogram of microseconds, 1 us to 60 s."""
    return HdrHistogram(1, _HIGHEST_US, digits)


def _us(seconds: float) -> int:
    return min(max(int(seconds * 1e6), 1), _HIGHEST_US)


@dataclass
class Second:
    """Everything measured in one second of the run."""

    at: int
    multiplier: float = 0.0
    events: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    holds_granted: int = 0
    holds_refused: int = 0
    #: Actions due while MAX_IN_FLIGHT requests were busy (the client's limit, not the API's).
    saturated: int = 0
    freshness: HdrHistogram = field(default_factory=lambda: latency_histogram(2))
    latency: dict[str, HdrHistogram] = field(default_factory=dict)
    dead_letters: int | None = None
    oversold: int | None = None

    def time(self, endpoint: str, seconds: float) -> None:
        """Record one request's latency."""
        histogram = self.latency.get(endpoint)
        if histogram is None:
            histogram = self.latency[endpoint] = latency_histogram(2)
        histogram.record_value(_us(seconds))


def worker_url(settings: Settings, dev: DevSetup | None, given: str | None) -> str:
    """The base URL of the worker's ``/metrics`` (dead letters, oversold positions)."""
    if given:
        return given.rstrip("/")
    if dev is not None:
        return dev.worker_url.rstrip("/")
    host = settings.worker.host
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://{host}:{settings.worker.port}"


_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{[^}]*\})? (?P<value>\S+)$", re.M)


def _worker_figures(text: str) -> tuple[int, int] | None:
    """(dead letters so far, oversold positions now) from the worker's metrics text."""
    dead = oversold = None
    for sample in _SAMPLE.finditer(text):
        name, value = sample["name"], float(sample["value"])
        if name == "stocksync_dead_letters_total":
            dead = (dead or 0) + int(value)
        elif name == "stocksync_oversold_positions":
            oversold = (oversold or 0) + int(value)
    if dead is None and oversold is None:
        return None
    return dead or 0, oversold or 0


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Rehearsal:
    """One run of a profile against one API, broker and worker."""

    def __init__(
        self,
        settings: Settings,
        profile: Profile,
        client: ApiClient,
        *,
        duration: float,
        worker: str,
        err: TextIO,
        seed: int | None = None,
    ) -> None:
        self.settings = settings
        self.profile = profile
        self.client = client
        self.duration = duration
        self.worker = worker
        self.err = err
        self.rng = random.Random(seed)
        self.run_id = uuid.uuid4().hex[:8]
        channel = settings.channels[0]
        self.channel = channel.name
        self.nodes = list(channel.nodes)
        digits = len(str(profile.skus))
        self.skus = [f"{profile.sku_prefix}{i:0{digits}d}" for i in range(1, profile.skus + 1)]
        self.tracer_skus = [f"{profile.sku_prefix}tracer-{i}" for i in range(_TRACERS)]
        self.scarce_skus = [
            f"{profile.sku_prefix}scarce-{i}" for i in range(1, profile.scarce_skus + 1)
        ]
        self.topics = topic_names(settings)
        self.seconds: list[Second] = []
        self.latency = {name: latency_histogram() for name in ENDPOINTS}
        self.freshness = latency_histogram()
        self.freshness_missed = 0
        self.started_at = ""
        self.started = 0.0
        self._ids = itertools.count(1)
        self._open_orders: deque[tuple[str, str]] = deque()
        self._open_returns: deque[tuple[str, str, str]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._deliveries: list[tuple[Second, str, asyncio.Future[Any]]] = []
        self._producer: Any = None
        self._dead_base: int | None = None

    # --- helpers ----------------------------------------------------------------------

    def _second(self) -> Second:
        # What lands after the end (answers, deliveries in flight) counts in the last second.
        last = max(0, int(self.duration + 0.999) - 1)
        index = min(int(time.monotonic() - self.started), last)
        while len(self.seconds) <= index:
            self.seconds.append(Second(at=len(self.seconds)))
        return self.seconds[index]

    def _id(self, what: str) -> str:
        return f"rh-{self.run_id}-{what}-{next(self._ids)}"

    def _spawn(self, job: Any) -> None:
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- setup --------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Start the producer; count every SKU in at every node; wait until all are served."""
        self._producer = await open_producer(self.settings, max_request_size=16 * 1024 * 1024)
        everything = self.skus + self.tracer_skus + self.scarce_skus
        scarce = set(self.scarce_skus)
        events = [
            StockSnapshot(
                schema=1, event_id=self._id("seed"), occurred_at=_now(), source=REHEARSE_SOURCE,
                sku=sku, node=node, on_hand=_SCARCE if sku in scarce else _ON_HAND, as_of=_now(),
            )
            for sku in everything
            for node in self.nodes
        ]  # fmt: skip
        for start in range(0, len(events), _SEED_CHUNK):
            chunk = events[start : start + _SEED_CHUNK]
            await self._producer.send_and_wait(
                self.topics.stock, msgspec.json.encode(chunk), key=chunk[0].sku.encode()
            )
        deadline = time.monotonic() + _SEED_TIMEOUT
        missing = everything
        while missing:
            still: list[str] = []
            for start in range(0, len(missing), 500):
                part = missing[start : start + 500]
                response = ApiClient.queried(await self.client.query(part, self.channel))
                still.extend(part if response is None else response.unknown)
            missing = still
            if not missing:
                break
            if time.monotonic() > deadline:
                raise OperateError(
                    f"the API did not serve the rehearsal's {len(everything)} SKUs within"
                    f" {_SEED_TIMEOUT:g} s ({len(missing)} still unknown); is the worker running?"
                )
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        """Stop the producer."""
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()

    # --- the run --------------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the profile for the duration, then let what is in flight land."""
        self.started_at = _now()
        self.started = time.monotonic()
        stop = asyncio.Event()
        helpers = [asyncio.ensure_future(self._tracer(sku, stop)) for sku in self.tracer_skus] + [
            asyncio.ensure_future(self._monitor(stop))
        ]
        credit = dict.fromkeys((*EVENT_KINDS, "single", "batch", "holds"), 0.0)
        rates = msgspec.structs.asdict(self.profile.baseline)
        last = self.started
        try:
            while (now := time.monotonic()) - self.started < self.duration:
                elapsed = now - self.started
                m = self.profile.multiplier(elapsed, self.duration)
                second = self._second()
                second.multiplier = m
                dt = now - last
                last = now
                for kind in credit:
                    credit[kind] += rates[kind] * m * dt
                    due = int(credit[kind])
                    credit[kind] -= due
                    for _ in range(due):
                        self._act(kind, second)
                self._settle_deliveries()
                await asyncio.sleep(_TICK)
            stop.set()
            deadline = time.monotonic() + 10
            while (self._tasks or self._deliveries) and time.monotonic() < deadline:
                self._settle_deliveries()
                await asyncio.sleep(0.05)
            await asyncio.sleep(_SETTLE)  # late dead letters show in the last scrape
            await self._scrape(self.seconds[-1] if self.seconds else self._second())
        finally:
            stop.set()
            for task in [*self._tasks, *helpers]:
                task.cancel()
            await asyncio.gather(*self._tasks, *helpers, return_exceptions=True)

    def _act(self, kind: str, second: Second) -> None:
        if kind in EVENT_KINDS:
            self._send_event(kind, second)
            return
        if self._in_flight >= MAX_IN_FLIGHT:
            second.saturated += 1
            return
        self._in_flight += 1
        self._spawn(self._request(kind))

    # --- events ---------------------------------------------------------------------------

    def _send_event(self, kind: str, second: Second) -> None:
        rng = self.rng
        now = _now()
        envelope: dict[str, Any] = {
            "schema": 1, "occurred_at": now, "source": REHEARSE_SOURCE,
        }  # fmt: skip
        event: Any
        if kind == "stock":
            sku, node = rng.choice(self.skus), rng.choice(self.nodes)
            topic, key = self.topics.stock, sku
            if rng.random() < 0.2:
                event = StockSnapshot(
                    event_id=self._id("s"), sku=sku, node=node,
                    on_hand=rng.randint(_ON_HAND, 2 * _ON_HAND), as_of=now, **envelope,
                )  # fmt: skip
            else:
                event = StockAdjusted(
                    event_id=self._id("a"), sku=sku, node=node, delta=rng.randint(1, 5),
                    reason="receipt", **envelope,
                )  # fmt: skip
        elif kind == "orders":
            topic = self.topics.orders
            if self._open_orders and (len(self._open_orders) > 50 or rng.random() < 0.5):
                order_id, _sku = self._open_orders.popleft()
                event = OrderCancelled(event_id=self._id("oc"), order_id=order_id, **envelope)
            else:
                order_id, sku = self._id("o"), rng.choice(self.skus)
                event = OrderCreated(
                    event_id=self._id("or"), order_id=order_id, channel=self.channel,
                    lines=[CreatedLine(line_id="1", sku=sku, qty=rng.randint(1, 2))], **envelope,
                )  # fmt: skip
                self._open_orders.append((order_id, sku))
            key = order_id
        else:
            topic = self.topics.returns
            if self._open_returns and (len(self._open_returns) > 20 or rng.random() < 0.5):
                rma_id, sku, node = self._open_returns.popleft()
                event = ReturnInspected(
                    event_id=self._id("ri"), rma_id=rma_id, node=node,
                    lines=[InspectedLine(line_id="1", qty=1, disposition="restock")], **envelope,
                )  # fmt: skip
            else:
                rma_id, sku, node = self._id("r"), rng.choice(self.skus), rng.choice(self.nodes)
                event = ReturnReceived(
                    event_id=self._id("rr"), rma_id=rma_id, node=node,
                    lines=[ReceivedLine(line_id="1", qty=1, sku=sku)], **envelope,
                )  # fmt: skip
                self._open_returns.append((rma_id, sku, node))
            key = rma_id
        self._spawn(self._send(topic, msgspec.json.encode(event), key, kind, second))

    async def _send(self, topic: str, value: bytes, key: str, kind: str, sec: Second) -> None:
        try:
            delivery = await self._producer.send(topic, value, key=key.encode())
        except KafkaError:
            sec.errors["produce_failed"] += 1
            return
        self._deliveries.append((sec, kind, delivery))

    def _settle_deliveries(self) -> None:
        waiting = []
        for second, kind, delivery in self._deliveries:
            if not delivery.done():
                waiting.append((second, kind, delivery))
            elif delivery.exception() is not None:
                second.errors["produce_failed"] += 1
            else:
                second.events[kind] += 1
        self._deliveries = waiting

    # --- requests -----------------------------------------------------------------------

    async def _request(self, kind: str) -> None:
        try:
            if kind == "single":
                answer = await self.client.availability(self.rng.choice(self.skus), self.channel)
                self._account("single", answer)
            elif kind == "batch":
                size = min(self.profile.baseline.batch_size, len(self.skus))
                answer = await self.client.query(self.rng.sample(self.skus, size), self.channel)
                self._account("batch", answer)
            else:
                await self._hold()
        finally:
            self._in_flight -= 1

    async def _hold(self) -> None:
        hold_id = self._id("h")
        scarce = self.scarce_skus and self.rng.random() < self.profile.scarce_share
        sku = self.rng.choice(self.scarce_skus if scarce else self.skus)
        answer = await self.client.hold(
            hold_id, self.channel, [(sku, self.rng.randint(1, 3))], _HOLD_TTL
        )
        second = self._account("hold", answer, refusal="insufficient_stock")
        if answer.status == 201:
            second.holds_granted += 1
            await asyncio.sleep(self.rng.uniform(0.2, 1.5))
            self._account("release", await self.client.release(hold_id))
        elif answer.code == "insufficient_stock":
            second.holds_refused += 1

    def _account(self, endpoint: str, answer: Answer, refusal: str = "") -> Second:
        second = self._second()
        second.requests[endpoint] += 1
        if answer.status != 0:
            seconds = answer.seconds
            second.time(endpoint, seconds)
            self.latency[endpoint].record_value(_us(seconds))
        if not answer.ok and answer.code != refusal:
            label = answer.code if answer.status == 0 else f"{answer.status} {answer.code}"
            second.errors[label] += 1
        return second

    # --- freshness and the worker's figures ---------------------------------------------

    async def _tracer(self, sku: str, stop: asyncio.Event) -> None:
        """Change ``sku`` and time it until served, again and again, until ``stop``."""
        node = self.nodes[0]
        level = _ON_HAND
        etag: str | None = None
        while not stop.is_set():
            level = _ON_HAND + 1 if level == _ON_HAND else _ON_HAND
            now = _now()
            event = StockSnapshot(
                schema=1, event_id=self._id("t"), occurred_at=now, source=REHEARSE_SOURCE,
                sku=sku, node=node, on_hand=level, as_of=now,
            )  # fmt: skip
            sent = time.monotonic()
            try:
                await self._producer.send_and_wait(
                    self.topics.stock, msgspec.json.encode(event), key=sku.encode()
                )
            except KafkaError:
                self._second().errors["produce_failed"] += 1
                await asyncio.sleep(0.5)
                continue
            while True:
                answer = await self.client.availability(sku, self.channel, detail=True, etag=etag)
                if answer.status == 200:
                    etag = answer.etag
                    figure = ApiClient.served(answer)
                    nodes = (
                        [] if figure is None or not isinstance(figure.nodes, list) else figure.nodes
                    )
                    if any(n.node == node and n.on_hand == level for n in nodes):
                        seconds = time.monotonic() - sent
                        self._second().freshness.record_value(_us(seconds))
                        self.freshness.record_value(_us(seconds))
                        break
                if time.monotonic() - sent > _TRACE_GIVE_UP:
                    self.freshness_missed += 1
                    self._second().errors["freshness_timeout"] += 1
                    break
                await asyncio.sleep(_TRACE_POLL)

    async def _monitor(self, stop: asyncio.Event) -> None:
        """Scrape the worker's dead letters and oversold positions every second."""
        while not stop.is_set():
            await self._scrape(self._second())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def _scrape(self, second: Second) -> None:
        answer = await self.client.fetch(f"{self.worker}/metrics")
        figures = _worker_figures(answer.body.decode("utf-8", "replace")) if answer.ok else None
        if figures is None:
            return
        dead, oversold = figures
        if self._dead_base is None:
            self._dead_base = dead
        second.dead_letters = dead - self._dead_base
        second.oversold = oversold

    # --- progress -----------------------------------------------------------------------

    async def progress(self, stop: asyncio.Event) -> None:
        """A line on stderr every second: where the run is and what it measures."""
        terminal = self.err.isatty()
        shown = -1
        while not stop.is_set():
            await asyncio.sleep(0.25)
            index = int(time.monotonic() - self.started) - 1
            if index <= shown or index >= len(self.seconds) or index >= self.duration:
                continue
            shown = index
            s = self.seconds[index]
            fresh = (
                s.freshness.get_value_at_percentile(99) / 1e6
                if s.freshness.get_total_count()
                else None
            )
            worst = (
                max((h.get_value_at_percentile(99) for h in s.latency.values()), default=0) / 1e3
            )
            text = (
                f"rehearse {index + 1:>4}/{self.duration:g} s  x{s.multiplier:4.1f}"
                f"  events {sum(s.events.values()):>5}/s  requests {sum(s.requests.values()):>5}/s"
                f"  freshness p99 {'-' if fresh is None else f'{fresh:.3f} s'}"
                f"  api p99 {worst:.1f} ms  errors {sum(s.errors.values())}"
                f"  holds {s.holds_granted}/{s.holds_refused}"
                f"  dead letters {'?' if s.dead_letters is None else s.dead_letters}"
            )
            if terminal:
                self.err.write("\r\x1b[K" + text)
            else:
                self.err.write(text + "\n")
            self.err.flush()
        if terminal:
            self.err.write("\n")


# --- the command -----------------------------------------------------------------------------


async def _main(settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from stocksync.ops.report import judge, write_report

    profile = load_profile(args.profile)
    duration = args.duration or profile.duration_seconds
    if duration > MAX_DURATION:
        raise ValueError(f"--duration {duration:g} is over {MAX_DURATION:g} s")
    token = read_token(args.token_file or settings.probe.token_file)
    client = ApiClient(
        api_url(settings, args.dev_setup, args.api), token, connections=MAX_IN_FLIGHT
    )
    rehearsal = Rehearsal(
        settings, profile, client, duration=duration,
        worker=worker_url(settings, args.dev_setup, args.worker_url), err=err,
    )  # fmt: skip
    report = Path(args.report or f"rehearsal-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    try:
        print(
            f"rehearse: profile {profile.name!r} for {duration:g} s against {client.base} and"
            f" {settings.broker}; counting in {len(rehearsal.skus)} SKUs {profile.sku_prefix}*",
            file=err,
            flush=True,
        )
        await rehearsal.prepare()
        stop = asyncio.Event()
        rehearsal.started = time.monotonic()
        shown = asyncio.ensure_future(rehearsal.progress(stop))
        try:
            await rehearsal.run()
        finally:
            stop.set()
            await shown
    finally:
        await rehearsal.close()
        await client.close()
    summary = judge(rehearsal)
    write_report(rehearsal, summary, report)
    for slo in summary["slos"]:
        mark = {True: "pass", False: "FAIL", None: "not measured"}[slo["passed"]]
        name, measured, target = slo["name"], slo["measured_text"], slo["target_text"]
        print(f"  {name:<24} {measured:>12}  target {target:<10} {mark}", file=out)
    print(f"verdict: {summary['verdict']}; report in {report}/report.html", file=out, flush=True)
    return 0 if summary["verdict"] == "pass" else 1


def run(settings: Settings, args: argparse.Namespace) -> int:
    """``stocksync rehearse [--profile P] [--duration S] [--report DIR]``: the exit status."""
    import logging

    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    try:
        return asyncio.run(_main(settings, args, sys.stdout, sys.stderr))
    except ValueError as exc:
        print(f"stocksync rehearse: {exc}", file=sys.stderr)
        return 2
    except (OperateError, OSError) as exc:
        print(f"stocksync rehearse: {exc}", file=sys.stderr)
        return 1
