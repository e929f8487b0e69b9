"""``stocksync probe``: a synthetic canary through the real path, once or every N seconds.

One probe sends a ``stock.snapshot`` of the reserved probe SKU (``[probe] sku``,
see :func:`stocksync.config.settings.is_probe_sku`) to the stock topic, through
the broker, the translator, the applier and Redis, and times it until the API
serves the new version: it polls ``GET /v1/availability`` with the ETag it saw
before (``304`` until the version changes) and checks the node's ``on_hand``.
The snapshot alternates ``on_hand`` between two values so every probe is a
change; snapshots (not adjustments) keep the SKU's state from growing. With
holds on, it then takes a hold of one unit and releases it, each timed until
the API serves the changed ``held``. A step past its SLO, or not served
within a few times it, fails the probe.

``--once`` prints the figures and exits 1 on failure; ``--every 30s`` probes
until stopped and exports ``stocksync_probe_seconds``,
``stocksync_probe_success`` and friends on its own ``/metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import msgspec
from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from stocksync.agents.topics import topic_names
from stocksync.api.errors import json_errors
from stocksync.codecs.events import StockSnapshot
from stocksync.codecs.projections import ChannelAvailability
from stocksync.config.settings import Settings
from stocksync.ops.access import OperateError, open_producer
from stocksync.ops.client import Answer, ApiClient, api_url, read_token

__all__ = ["PROBE_SOURCE", "Probe", "ProbeMetrics", "ProbeResult", "run"]

#: The ``source`` of the probe's events.
PROBE_SOURCE: Final = "stocksync-probe"
#: The two ``on_hand`` figures a probe alternates between: far from 0, so a hold of one
#: unit fits whatever the node's safety stock or the channel's buffer.
_LEVELS: Final = (100_000, 100_001)
#: Seconds a step may take before it is given up, as a multiple of its SLO (at least 5 s).
_GIVE_UP_FACTOR: Final = 3.0
_GIVE_UP_MIN: Final = 5.0
_HOLD_TTL: Final = 60
_POLL_FIRST: Final = 0.002
_POLL_MAX: Final = 0.05


@dataclass(slots=True)
class ProbeResult:
    """What one probe measured; a step it did not get to is None."""

    event_seconds: float | None = None
    hold_seconds: float | None = None
    release_seconds: float | None = None
    version: int | None = None
    #: What went wrong, in words; empty when the probe met its SLOs.
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every step was served within its SLO."""
        return not self.problems


class Probe:
    """Runs probes of one channel and node against one API and broker."""

    def __init__(
        self,
        settings: Settings,
        client: ApiClient,
        *,
        slo_seconds: float,
        hold_slo_seconds: float,
        holds: bool,
    ) -> None:
        self.settings = settings
        self.client = client
        self.slo = slo_seconds
        self.hold_slo = hold_slo_seconds
        self.holds = holds
        probe = settings.probe
        self.sku = probe.sku
        channel = next(
            (c for c in settings.channels if c.name == probe.channel), settings.channels[0]
        )
        self.channel = channel.name
        self.node = probe.node or channel.nodes[0]
        self.topic = topic_names(settings).stock
        self._producer: Any = None

    async def close(self) -> None:
        """Stop the producer."""
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None

    async def once(self) -> ProbeResult:
        """One probe: the event, then (with holds) a hold and its release."""
        result = ProbeResult()
        before = await self.client.availability(self.sku, self.channel, detail=True)
        if before.status not in (200, 404):
            result.problems.append(f"the API answered {_said(before)} before the probe")
            return result
        figure = ApiClient.served(before)
        on_hand = _node_on_hand(figure, self.node)
        target = _LEVELS[1] if on_hand == _LEVELS[0] else _LEVELS[0]
        etag = before.etag if before.status == 200 else None
        problem = await self._connect()
        if problem:
            result.problems.append(problem)
            return result

        started = time.monotonic()
        problem = await self._send(target)
        if problem:
            result.problems.append(problem)
            return result
        served = await self._until(
            lambda f: _node_on_hand(f, self.node) == target, etag, started, self.slo
        )
        if isinstance(served, str):
            result.problems.append(f"event: {served}")
            return result
        result.event_seconds, now, etag = served
        result.version = now.version
        if result.event_seconds > self.slo:
            result.problems.append(
                f"event served in {result.event_seconds:.3f} s, over its SLO of {self.slo:g} s"
            )
        if self.holds:
            await self._hold(result, now, etag)
        return result

    async def _hold(self, result: ProbeResult, now: ChannelAvailability, etag: str | None) -> None:
        held_before = _held(now)
        hold_id = f"probe-{uuid.uuid4().hex[:20]}"
        started = time.monotonic()
        answer = await self.client.hold(hold_id, self.channel, [(self.sku, 1)], _HOLD_TTL)
        if answer.status != 201:
            result.problems.append(f"hold: the API answered {_said(answer)}")
            return
        served = await self._until(
            lambda f: _held(f) >= held_before + 1, etag, started, self.hold_slo
        )
        if isinstance(served, str):
            result.problems.append(f"hold: {served}")
            await self.client.release(hold_id)
            return
        result.hold_seconds, now, etag = served
        started = time.monotonic()
        answer = await self.client.release(hold_id)
        if answer.status != 200:
            result.problems.append(f"release: the API answered {_said(answer)}")
            return
        served = await self._until(lambda f: _held(f) <= held_before, etag, started, self.hold_slo)
        if isinstance(served, str):
            result.problems.append(f"release: {served}")
            return
        result.release_seconds = served[0]
        for step, seconds in (("hold", result.hold_seconds), ("release", result.release_seconds)):
            if seconds > self.hold_slo:
                result.problems.append(
                    f"{step} served in {seconds:.3f} s, over its SLO of {self.hold_slo:g} s"
                )

    async def _connect(self) -> str | None:
        """Start the producer unless it runs (not part of the timing); the problem, or None."""
        if self._producer is None:
            try:
                self._producer = await open_producer(self.settings)
            except OperateError as exc:
                return f"event not sent: {exc}"
        return None

    async def _send(self, on_hand: int) -> str | None:
        """Send the probe's snapshot; the problem in words, or None once delivered."""
        moment = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        event = StockSnapshot(
            schema=1,
            event_id=f"probe-{uuid.uuid4().hex}",
            occurred_at=moment,
            source=PROBE_SOURCE,
            sku=self.sku,
            node=self.node,
            on_hand=on_hand,
            as_of=moment,
        )
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(
                    self.topic, msgspec.json.encode(event), key=self.sku.encode()
                ),
                _give_up(self.slo),
            )
        except TimeoutError:
            return f"event not sent: the broker did not confirm it within {_give_up(self.slo):g} s"
        except KafkaError as exc:
            return f"event not sent: {exc!r}"
        return None

    async def _until(
        self,
        done: Any,
        etag: str | None,
        started: float,
        slo: float,
    ) -> tuple[float, ChannelAvailability, str | None] | str:
        """Poll until ``done(figure)``: (seconds since ``started``, figure, ETag), or why not."""
        deadline = started + _give_up(slo)
        pause = _POLL_FIRST
        last = "nothing served yet"
        while True:
            answer = await self.client.availability(self.sku, self.channel, detail=True, etag=etag)
            seen = time.monotonic()
            if answer.status == 200:
                figure = ApiClient.served(answer)
                if figure is not None and done(figure):
                    return seen - started, figure, answer.etag
                etag = answer.etag
            elif answer.status not in (304, 404):
                last = f"the API answered {_said(answer)}"
            if seen >= deadline:
                return f"not served within {seen - started:.1f} s ({last})"
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, _POLL_MAX)


def _give_up(slo: float) -> float:
    return max(slo * _GIVE_UP_FACTOR, _GIVE_UP_MIN)


def _said(answer: Answer) -> str:
    if answer.status == 0:
        return f"nothing ({answer.code})"
    return f"{answer.status} {answer.code}".strip()


def _node_on_hand(figure: ChannelAvailability | None, node: str) -> int | None:
    if figure is None or isinstance(figure.nodes, msgspec.UnsetType):
        return None
    return next((n.on_hand for n in figure.nodes if n.node == node), None)


def _held(figure: ChannelAvailability) -> int:
    return 0 if isinstance(figure.held, msgspec.UnsetType) else figure.held


# --- reporting -------------------------------------------------------------------------


def describe(probe: Probe, result: ProbeResult) -> str:
    """One line: what the probe measured against its SLOs, and the verdict."""
    parts = []
    if result.event_seconds is not None:
        parts.append(f"event served in {result.event_seconds:.3f} s (SLO {probe.slo:g} s)")
    if result.hold_seconds is not None:
        parts.append(f"hold {result.hold_seconds:.3f} s")
    if result.release_seconds is not None:
        parts.append(f"release {result.release_seconds:.3f} s (SLO {probe.hold_slo:g} s)")
    figures = ", ".join(parts) or "nothing measured"
    verdict = "ok" if result.ok else "FAILED: " + "; ".join(result.problems)
    return f"probe {probe.sku} on {probe.channel} at {probe.node}: {figures}: {verdict}"


class ProbeMetrics:
    """What ``--every`` exports on its own ``/metrics``."""

    def __init__(self, slo: float) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.success = Gauge(
            "stocksync_probe_success", "1 when the last synthetic probe met its SLOs.", registry=r
        )
        self.seconds = Gauge(
            "stocksync_probe_seconds",
            "Event-to-served time of the last probe (the time waited when it was not served).",
            registry=r,
        )
        self.hold_seconds = Gauge(
            "stocksync_probe_hold_seconds",
            "Hold and release request-to-served times of the last probe.",
            ["step"],
            registry=r,
        )
        self.slo = Gauge(
            "stocksync_probe_slo_seconds", "The event-to-served SLO of the probe.", registry=r
        )
        self.runs = Counter(
            "stocksync_probe_runs_total", "Probes run, by outcome.", ["outcome"], registry=r
        )
        self.last_run = Gauge(
            "stocksync_probe_last_run_timestamp_seconds",
            "When the last probe ended (Unix time).",
            registry=r,
        )
        self.slo.set(slo)
        self.success.set(float("nan"))
        self.seconds.set(float("nan"))
        for outcome in ("ok", "failed"):
            self.runs.labels(outcome)

    def record(self, result: ProbeResult, waited: float) -> None:
        """Export one probe's figures."""
        self.success.set(1.0 if result.ok else 0.0)
        self.seconds.set(result.event_seconds if result.event_seconds is not None else waited)
        for step, seconds in (("hold", result.hold_seconds), ("release", result.release_seconds)):
            self.hold_seconds.labels(step).set(seconds if seconds is not None else float("nan"))
        self.runs.labels("ok" if result.ok else "failed").inc()
        self.last_run.set(time.time())


# --- the command --------------------------------------------------------------------------


async def _serve_metrics(metrics: ProbeMetrics, host: str, port: int) -> web.AppRunner:
    async def render(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def alive(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/metrics", render)
    app.router.add_get("/healthz", alive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


def _bound_port(runner: web.AppRunner) -> int:
    for server in runner.addresses:
        return int(server[1])
    return 0


async def _main(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    token = read_token(args.token_file or settings.probe.token_file)
    client = ApiClient(api_url(settings, args.dev_setup, args.api), token)
    probe = Probe(
        settings,
        client,
        slo_seconds=args.slo or settings.probe.slo_seconds,
        hold_slo_seconds=args.hold_slo or settings.probe.hold_slo_seconds,
        holds=settings.probe.holds and args.holds,
    )
    try:
        if args.every is None:
            result = await probe.once()
            print(describe(probe, result), file=out, flush=True)
            return 0 if result.ok else 1
        return await _every(probe, args, settings, out)
    finally:
        await probe.close()
        await client.close()


async def _every(probe: Probe, args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    metrics = ProbeMetrics(probe.slo)
    port = settings.probe.port if args.port is None else args.port
    host = settings.probe.host
    runner = await _serve_metrics(metrics, host, port)
    print(
        f"probe: every {args.every:g} s against {probe.client.base}; metrics on"
        f" http://{host}:{_bound_port(runner)}/metrics",
        file=out,
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        while not stop.is_set():
            started = time.monotonic()
            result = await probe.once()
            metrics.record(result, time.monotonic() - started)
            print(describe(probe, result), file=out, flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), max(0.0, args.every - (time.monotonic() - started))
                )
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
    return 0


def run(settings: Settings, args: argparse.Namespace) -> int:
    """``stocksync probe [--once | --every 30s]``: returns the exit status."""
    import logging

    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    try:
        return asyncio.run(_main(settings, args, sys.stdout))
    except (ValueError, OSError) as exc:
        print(f"stocksync probe: {exc}", file=sys.stderr)
        return 1
