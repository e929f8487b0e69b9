"""Drive real ``stocksync worker`` processes and hold what they write to the contract's model.

* :class:`Wire` builds events the way producers send them (JSON objects, fresh
  ``event_id``, RFC 3339 times); :func:`single` and :func:`bulk` wrap them in
  messages whose items say what must become of them: :func:`ok` items are
  judged by the reference model, :func:`bad` items must be dead-lettered with
  the given reason.
* :class:`Ledger` remembers every message sent and where it landed (partition,
  offset). From it come the reference model - ``tests.readmodel.oracle``, fed
  the schema-valid events in the order each key received them - and the dead
  letters the contract asks for.
* :class:`Cluster` is one deployment under test: a config file, worker
  processes, a producer, and read-outs of Redis and of the dead-letter topic.
  :meth:`Cluster.settle` sends a sentinel through every (source partition,
  effects partition) pair and waits until each one reached Redis and the
  versions stop changing: by then everything sent before was applied.
* :func:`realistic_stream` generates a seeded mix of every event type.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stocksync.agents.topics import effects_partition
from stocksync.codecs.events import Event
from stocksync.codecs.messages import Reason
from stocksync.codecs.projections import Served
from stocksync.daemon.services import free_port
from stocksync.readmodel.core import ChannelSpec, Topology
from stocksync.store import RedisStore
from stocksync.store.layout import Keys
from stocksync.store.served import decode_detail, decode_served
from tests.readmodel.oracle import (
    APPLIED,
    DUPLICATE,
    ChannelFigures,
    Model,
    NodeFigures,
    expected_model,
)

__all__ = [
    "CHANNELS",
    "NODES",
    "NODE_SAFETY",
    "T0",
    "Channel",
    "Cluster",
    "DeadLetterSeen",
    "Item",
    "Landed",
    "Ledger",
    "Msg",
    "Observed",
    "Reference",
    "Wire",
    "WorkerProcess",
    "bad",
    "bulk",
    "ok",
    "realistic_stream",
    "redis_options",
    "single",
]

_T = TypeVar("_T")

#: Minute 0 of every scenario; event times are minutes after it.
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
#: Nodes the scenarios use; every one belongs to a channel, so the projection shows it.
NODES = ("dc-east", "dc-west", "store-1")
#: Default safety stock per node (the ``[nodes]`` table of the config).
NODE_SAFETY = {"dc-west": 2}
#: How long a worker may take to be ready (a restart waits for the dead member's session).
READY_TIMEOUT = 90.0


@dataclass(frozen=True)
class Channel:
    """A configured channel, written to the TOML file and given to the reference."""

    name: str
    nodes: tuple[str, ...]
    buffer: int = 0
    low_stock_threshold: int = 0
    #: The feed's ``notify`` and ``notify_min_interval_ms`` (the defaults when None).
    notify: str | None = None
    notify_min_interval_ms: int | None = None


CHANNELS = (
    Channel("web", ("dc-east", "dc-west"), buffer=1, low_stock_threshold=5),
    Channel("store", ("store-1", "dc-east"), low_stock_threshold=2),
)


# --- events as producers send them -------------------------------------------------------


def _moment(at: float | datetime) -> str:
    moment = at if isinstance(at, datetime) else T0 + timedelta(minutes=at)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _encode(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Wire:
    """Builds wire events (plain JSON objects), each with a fresh ``event_id``; times in minutes."""

    def __init__(self, tag: str = "ev") -> None:
        self.tag = tag
        self._ids = itertools.count(1)

    def envelope(
        self, kind: str, at: float | datetime, source: str, eid: str | None = None
    ) -> dict[str, Any]:
        """The fields every event carries."""
        return {
            "type": kind,
            "schema": 1,
            "event_id": eid or f"{self.tag}-{next(self._ids)}",
            "occurred_at": _moment(at),
            "source": source,
        }

    def snapshot(
        self, sku: str, node: str, on_hand: int, as_of: float | datetime, *,
        at: float | datetime | None = None, source: str = "erp",
    ) -> dict[str, Any]:
        """``stock.snapshot``: ``on_hand`` at ``node`` as of ``as_of``."""
        return {
            **self.envelope("stock.snapshot", as_of if at is None else at, source),
            "sku": sku, "node": node, "on_hand": on_hand, "as_of": _moment(as_of),
        }

    def adjusted(
        self, sku: str, node: str, delta: int, at: float | datetime, *,
        reason: str = "correction", source: str = "wms",
    ) -> dict[str, Any]:
        """``stock.adjusted``: ``delta`` at ``node``, occurred at ``at``."""
        return {
            **self.envelope("stock.adjusted", at, source),
            "sku": sku, "node": node, "delta": delta, "reason": reason,
        }

    def policy(
        self, sku: str, node: str, safety_stock: int, at: float | datetime, *, source: str = "erp"
    ) -> dict[str, Any]:
        """``stock.policy``: safety stock at ``node`` set at ``at``."""
        return {
            **self.envelope("stock.policy", at, source),
            "sku": sku, "node": node, "safety_stock": safety_stock,
        }

    def created(
        self, order_id: str, lines: Sequence[tuple[str, str, int, str | None]], *,
        channel: str = "web", at: float | datetime = 30, source: str = "shop",
    ) -> dict[str, Any]:
        """``order.created``; lines are ``(line_id, sku, qty, node or None)``."""
        body = []
        for line_id, sku, qty, node in lines:
            line: dict[str, Any] = {"line_id": line_id, "sku": sku, "qty": qty}
            if node is not None:
                line["node"] = node
            body.append(line)
        return {
            **self.envelope("order.created", at, source),
            "order_id": order_id, "channel": channel, "lines": body,
        }

    def allocated(
        self, order_id: str, lines: dict[str, str], *, at: float | datetime = 31,
        source: str = "oms",
    ) -> dict[str, Any]:
        """``order.allocated``; lines map line_id to node."""
        return {
            **self.envelope("order.allocated", at, source),
            "order_id": order_id,
            "lines": [{"line_id": i, "node": n} for i, n in lines.items()],
        }

    def cancelled(
        self, order_id: str, lines: dict[str, int] | None = None, *,
        at: float | datetime = 32, source: str = "shop",
    ) -> dict[str, Any]:
        """``order.cancelled``; lines map line_id to qty, None cancels the whole order."""
        event = {**self.envelope("order.cancelled", at, source), "order_id": order_id}
        if lines is not None:
            event["lines"] = [{"line_id": i, "qty": q} for i, q in lines.items()]
        return event

    def shipped(
        self, order_id: str, node: str, lines: dict[str, int], *, at: float | datetime = 33,
        source: str = "wms-east", shipment_id: str = "shp-1",
    ) -> dict[str, Any]:
        """``order.shipped`` from ``node``; lines map line_id to qty."""
        return {
            **self.envelope("order.shipped", at, source),
            "order_id": order_id, "shipment_id": shipment_id, "node": node,
            "lines": [{"line_id": i, "qty": q} for i, q in lines.items()],
        }

    def authorized(
        self, rma_id: str, lines: dict[str, tuple[str, int]], *, order_id: str | None = None,
        at: float | datetime = 50, source: str = "returns",
    ) -> dict[str, Any]:
        """``return.authorized``; lines map line_id to (sku, qty)."""
        event = {
            **self.envelope("return.authorized", at, source),
            "rma_id": rma_id,
            "lines": [{"line_id": i, "sku": s, "qty": q} for i, (s, q) in lines.items()],
        }
        if order_id is not None:
            event["order_id"] = order_id
        return event

    def received(
        self, rma_id: str, node: str, lines: Sequence[tuple[str, int, str | None]], *,
        at: float | datetime = 51, source: str = "returns",
    ) -> dict[str, Any]:
        """``return.received`` at ``node``; lines are ``(line_id, qty, sku or None)``."""
        body = []
        for line_id, qty, sku in lines:
            line: dict[str, Any] = {"line_id": line_id, "qty": qty}
            if sku is not None:
                line["sku"] = sku
            body.append(line)
        return {**self.envelope("return.received", at, source), "rma_id": rma_id,
                "node": node, "lines": body}

    def inspected(
        self, rma_id: str, node: str, lines: Sequence[tuple[str, int, str]], *,
        at: float | datetime = 52, source: str = "returns",
    ) -> dict[str, Any]:
        """``return.inspected`` at ``node``; lines are ``(line_id, qty, disposition)``."""
        return {
            **self.envelope("return.inspected", at, source),
            "rma_id": rma_id, "node": node,
            "lines": [{"line_id": i, "qty": q, "disposition": d} for i, q, d in lines],
        }


# --- messages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One event of a message: its bytes, and the reason it must be dead-lettered, if any.

    ``reason`` None means the reference model judges the event (applied,
    duplicate, or rejected for an unknown order, line or RMA).
    """

    raw: bytes
    reason: str | None = None


def ok(event: dict[str, Any]) -> Item:
    """A schema-valid event; the reference decides what becomes of it."""
    return Item(_encode(event))


def bad(payload: dict[str, Any] | bytes, reason: str) -> Item:
    """An event that must reach the dead-letter topic with ``reason`` and change nothing."""
    return Item(payload if isinstance(payload, bytes) else _encode(payload), reason)


_KIND_OF_TYPE = {"stock": "stock", "order": "orders", "return": "returns"}
_KEY_FIELD = {"stock": "sku", "orders": "order_id", "returns": "rma_id"}


@dataclass(frozen=True)
class Msg:
    """One Kafka message: a single event or a bulk array, its key, and optionally a partition."""

    kind: str
    key: str | None
    items: tuple[Item, ...]
    is_bulk: bool
    partition: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def value(self) -> bytes:
        """The message value: the event itself, or a JSON array of the items."""
        if not self.is_bulk:
            return self.items[0].raw
        return b"[" + b",".join(item.raw for item in self.items) + b"]"


def _as_item(event: Item | dict[str, Any]) -> Item:
    return event if isinstance(event, Item) else ok(event)


def single(
    event: Item | dict[str, Any], *, kind: str | None = None, key: str | None = None,
    partition: int | None = None, headers: Sequence[tuple[str, bytes]] = (),
) -> Msg:
    """A one-event message; topic and key follow the contract unless given."""
    item = _as_item(event)
    if kind is None or key is None:
        decoded = json.loads(item.raw)
        kind = kind or _KIND_OF_TYPE[decoded["type"].split(".", 1)[0]]
        key = key if key is not None else decoded[_KEY_FIELD[kind]]
    return Msg(kind, key, (item,), False, partition, tuple(headers))


def bulk(
    kind: str, key: str, events: Iterable[Item | dict[str, Any]], *, partition: int | None = None
) -> Msg:
    """A bulk message (JSON array) on ``kind``'s topic under ``key``."""
    return Msg(kind, key, tuple(_as_item(e) for e in events), True, partition)


# --- what was sent, and what it must give -------------------------------------------------


@dataclass(frozen=True)
class Landed:
    """A message and where the broker put it."""

    msg: Msg
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, order=True)
class DeadLetterSpot:
    """What identifies a dead letter: why, and where its event was read."""

    reason: str
    topic: str
    partition: int
    offset: int
    index: int | None


@dataclass(frozen=True)
class ExpectedDead:
    """A dead letter the contract asks for, with the event bytes it must carry."""

    spot: DeadLetterSpot
    key: str | None
    raw: bytes
    correlation_id: str | None


@dataclass
class Reference:
    """The contract's model of everything sent, and the dead letters it implies."""

    model: Model
    dead: list[ExpectedDead]
    events: int


_event_decoder = msgspec.json.Decoder(Event)


class Ledger:
    """Every message sent, in send order, with where it landed."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.landed: list[Landed] = []

    def extend(self, landed: Iterable[Landed]) -> None:
        """Record messages in the order they were sent."""
        self.landed.extend(landed)

    @property
    def events(self) -> int:
        """How many events (items) were sent, sentinels included."""
        return sum(len(entry.msg.items) for entry in self.landed)

    def reference(self) -> Reference:
        """Feed the schema-valid events to the oracle; collect every expected dead letter."""
        events: list[Event] = []
        judged: list[ExpectedDead] = []
        dead: list[ExpectedDead] = []
        nodes = sorted({n for spec in self.topology.channels for n in spec.nodes})
        for entry in self.landed:
            for position, item in enumerate(entry.msg.items):
                letter = _letter_of(entry, position, item)
                if item.reason is not None:
                    dead.append(letter)
                    continue
                events.append(_event_decoder.decode(item.raw))
                judged.append(letter)
        model = expected_model(events, self.topology, [], nodes)
        for verdict, letter in zip(model.verdicts, judged, strict=True):
            if verdict not in (APPLIED, DUPLICATE):
                spot = letter.spot
                dead.append(ExpectedDead(
                    DeadLetterSpot(verdict, spot.topic, spot.partition, spot.offset, spot.index),
                    letter.key, letter.raw, letter.correlation_id,
                ))
        return Reference(model=model, dead=dead, events=self.events)


def _letter_of(entry: Landed, position: int, item: Item) -> ExpectedDead:
    """The dead letter ``item`` would give (its reason, or none yet when the oracle judges)."""
    msg = entry.msg
    index = position if msg.is_bulk else None
    cid: str | None = None
    if item.reason is None or item.reason == Reason.KEY_MISMATCH:
        cid = json.loads(item.raw).get("correlation_id")
    header = dict(msg.headers).get("correlation_id")
    if cid is None and header is not None:
        cid = header.decode()
    spot = DeadLetterSpot(item.reason or "", entry.topic, entry.partition, entry.offset, index)
    return ExpectedDead(spot, msg.key, item.raw, cid)


# --- what the workers wrote ---------------------------------------------------------------


@dataclass
class Observed:
    """The read model as Redis holds it, in the oracle's shapes."""

    nodes: dict[tuple[str, str], NodeFigures] = field(default_factory=dict)
    channels: dict[tuple[str, str], ChannelFigures] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    #: Inconsistencies inside one SKU's hash (version fields, a node shown twice differently).
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeadLetterSeen:
    """One record read back from the dead-letter topic."""

    record: dict[str, Any]
    key: bytes | None
    headers: dict[str, bytes]

    @property
    def spot(self) -> DeadLetterSpot:
        """Why and where, from the record's value."""
        r = self.record
        return DeadLetterSpot(r["reason"], r["topic"], r["partition"], r["offset"],
                              r.get("index"))


def diff_models(expected: Model, observed: Observed, limit: int = 25) -> list[str]:
    """Every difference between the reference and Redis, as readable lines (at most ``limit``)."""
    lines = list(observed.problems)
    want_skus = {sku for sku, _ in expected.channels}
    have_skus = set(observed.versions)
    for sku in sorted(want_skus - have_skus):
        lines.append(f"{sku}: missing from Redis")
    for sku in sorted(have_skus - want_skus):
        lines.append(f"{sku}: in Redis but the reference has no such SKU")
    for key in sorted(expected.channels.keys() & observed.channels.keys()):
        if expected.channels[key] != observed.channels[key]:
            lines.append(f"channel {key}: want {expected.channels[key]}, "
                         f"got {observed.channels[key]}")
    for key in sorted(observed.nodes):
        want = expected.nodes.get(key)
        if want != observed.nodes[key]:
            lines.append(f"node {key}: want {want}, got {observed.nodes[key]}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more differences"]
    return lines


# --- worker processes ---------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGKILL the worker if the test process dies."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG

    return hook


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: metric name (labels dropped) -> sum over its samples."""
    sums: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        sums[name] += float(value)
    return dict(sums)


class WorkerProcess:
    """One ``stocksync worker`` subprocess, restartable; every run appends to one log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.runs = 0
        self.exit_codes: list[int] = []
        self._log_start = 0

    def start(self) -> WorkerProcess:
        """Start a new run (the previous one must have ended)."""
        assert not self.alive, f"worker {self.name} is still running"
        self.runs += 1
        self.port = None
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            log.write(f"--- run {self.runs} of worker {self.name} at "
                      f"{time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        return self

    @property
    def alive(self) -> bool:
        """Whether the current run is still running."""
        return self.proc is not None and self.proc.poll() is None

    def describe(self) -> str:
        """``name: running`` or ``name: exited N``, with the exit codes of earlier runs."""
        now = "running" if self.alive else (
            f"exited {self.proc.returncode}" if self.proc is not None else "not running")
        return f"{self.name}: {now} (earlier runs: {self.exit_codes})"

    def _reap(self) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=30)
        self.exit_codes.append(code)
        self.proc = None
        return code

    def run_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines of the current (or last) run."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            text = log.read().decode("utf-8", "replace")
        lines = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    lines.append(parsed)
        return lines

    def run_text(self) -> str:
        """The raw stderr of the current (or last) run."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode("utf-8", "replace")

    def tail(self, lines: int = 40) -> str:
        """The end of the log file, for failure messages."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> WorkerProcess:
        """Wait for the ``worker ready`` log line of this run; learn the metrics port."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.run_lines():
                if "port" in line and self.port is None:
                    self.port = int(line["port"])
                if str(line.get("msg", "")).startswith("worker ready"):
                    assert self.port is not None, "the worker logged no metrics port"
                    return self
            if not self.alive:
                code = self._reap() if self.proc is not None else None
                raise AssertionError(
                    f"worker {self.name} exited ({code}) before it was ready:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker {self.name} not ready within {timeout:.0f} s:\n{self.tail()}"
                )
            time.sleep(0.1)

    def metrics(self) -> dict[str, float]:
        """The current run's /metrics, summed per metric name."""
        assert self.port is not None, "wait_ready() first"
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return parse_metrics(response.read().decode())

    def events_seen(self) -> float:
        """Source events this run has translated, rejected or skipped."""
        m = self.metrics()
        return sum(m.get(name, 0.0) for name in (
            "stocksync_events_consumed_total",
            "stocksync_events_rejected_total",
            "stocksync_events_skipped_total",
        ))

    def wait_progress(self, skus_written: float = 1, timeout: float = 60.0) -> None:
        """Wait until this run has written at least ``skus_written`` SKUs to Redis."""
        deadline = time.monotonic() + timeout
        while self.metrics().get("stocksync_skus_written_total", 0.0) < skus_written:
            if not self.alive or time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} made no progress:\n{self.tail()}")
            time.sleep(0.05)

    def kill(self) -> int:
        """SIGKILL the current run, as a crash would; returns its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return self._reap()

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM the current run; (exit status or None if still running, seconds waited)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - started
        return self._reap(), time.monotonic() - started

    def wait_exit(self, timeout: float) -> int:
        """Wait for the current run to end by itself; its exit status."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.name} still runs after {timeout:.0f} s:\n{self.tail()}"
            ) from None
        return self._reap()

    def close(self) -> None:
        """Kill the current run if it is still going."""
        if self.proc is not None:
            if self.alive:
                self.proc.send_signal(signal.SIGKILL)
            self._reap()


class ApiReplica:
    """One ``stocksync api`` subprocess of the deployment, answering on a free port."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                env={**env, "STOCKSYNC_API_PORT": str(self.port)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )

    def readyz(self) -> tuple[int, dict[str, Any]]:
        """``/readyz``: status and body (0 and {} while nothing answers)."""
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> ApiReplica:
        """Wait until ``/readyz`` is 200."""
        deadline = time.monotonic() + timeout
        while self.readyz()[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the API replica was not ready:\n{self.tail()}")
            time.sleep(0.1)
        return self

    def query(self, skus: Sequence[str], channel: str) -> dict[str, Any]:
        """``POST /v1/availability/query`` with node detail."""
        body = json.dumps({"skus": list(skus), "channel": channel, "detail": True}).encode()
        request = urllib.request.Request(
            self.url + "/v1/availability/query", data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer

    def read_model(self, skus: Sequence[str], channels: Sequence[str]) -> Observed:
        """What this replica serves for ``skus`` on ``channels``, in the oracle's shapes."""
        seen = Observed()
        for channel in channels:
            for start in range(0, len(skus), 1000):
                for item in self.query(skus[start : start + 1000], channel)["items"]:
                    sku = item["sku"]
                    seen.versions[sku] = item["version"]
                    seen.channels[(sku, channel)] = ChannelFigures(item["available"],
                                                                   item["status"])
                    for node in item["nodes"]:
                        figures = NodeFigures(
                            on_hand=node["on_hand"], reserved=node["reserved"],
                            quarantine=node["quarantine"], safety_stock=node["safety_stock"],
                            available=node["available"],
                        )
                        shown = seen.nodes.setdefault((sku, node["node"]), figures)
                        if shown != figures:
                            seen.problems.append(f"{sku}@{node['node']}: differs between "
                                                 "channels")
        return seen

    def tail(self, lines: int = 40) -> str:
        """The end of the replica's log."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def close(self) -> None:
        """Stop the replica."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


# --- the deployment under test ------------------------------------------------------------


class _LoopThread:
    """An asyncio loop in a thread: the producer lives there while the test drives processes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="e2e-kafka", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Start ``coro`` on the loop; returns at once."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 120.0) -> _T:
        """Run ``coro`` on the loop and wait for its result."""
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        """Cancel what still runs, stop the loop and its thread."""

        async def cancel_the_rest() -> None:
            current = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not current]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_the_rest(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def redis_options(request: pytest.FixtureRequest, kind: str) -> dict[str, Any]:
    """Options of :class:`Cluster` for ``kind`` "redis" (the test's database) or
    "redis-cluster" (the session's three-master cluster, flushed)."""
    if kind == "redis":
        return {}
    return {"redis_url": request.getfixturevalue("redis_cluster_url"), "redis_cluster": True}


class Cluster:
    """One deployment of a test: config, workers, producer, and read-outs of Redis and the DLQ."""

    def __init__(
        self,
        *,
        bootstrap: str,
        broker_url: str,
        redis_url: str,
        prefix: str,
        workdir: Path,
        partitions: int = 4,
        shutdown_timeout: float = 10.0,
        channels: Sequence[Channel] = CHANNELS,
        node_safety: dict[str, int] | None = None,
        batch_size: int | None = None,
        extra_config: str = "",
        redis_cluster: bool = False,
    ) -> None:
        self.extra_config = extra_config
        self.bootstrap = bootstrap
        #: ``redis_url`` names a node of a Redis Cluster.
        self.redis_cluster = redis_cluster
        self.batch_size = batch_size
        self.broker_url = broker_url
        self.redis_url = redis_url
        self.prefix = prefix
        self.workdir = workdir
        self.partitions = partitions
        self.shutdown_timeout = shutdown_timeout
        self.channels = tuple(channels)
        self.node_safety = dict(NODE_SAFETY if node_safety is None else node_safety)
        self.group_id = f"{prefix}-group"
        self.topics = {
            "stock": f"{prefix}.stock.v1",
            "orders": f"{prefix}.orders.v1",
            "returns": f"{prefix}.returns.v1",
            "effects": f"{prefix}.effects.v1",
            "dlq": f"{prefix}.dlq",
        }
        self.topology = Topology(
            channels=tuple(
                ChannelSpec(name=c.name, nodes=c.nodes, buffer=c.buffer,
                            low_stock_threshold=c.low_stock_threshold)
                for c in self.channels
            ),
            safety_defaults=dict(self.node_safety),
        )
        self.config_path = workdir / "stocksync.toml"
        self.config_path.write_text(self._config_text(), encoding="utf-8")
        self.ledger = Ledger(self.topology)
        self.wire = Wire()
        self.workers: dict[str, WorkerProcess] = {}
        self.apis: list[ApiReplica] = []
        #: Facts shown when a test fails (seeds, what happened when).
        self.notes: list[str] = []
        self._io = _LoopThread()
        self._producer: AIOKafkaProducer | None = None
        self._redis: redis.Redis | redis.RedisCluster = (
            redis.RedisCluster.from_url(redis_url) if redis_cluster
            else redis.Redis.from_url(redis_url)
        )
        # The model is read through the store, as the API reads it (in the I/O thread's loop).
        self._store = RedisStore.from_url(redis_url, Keys(prefix), cluster=redis_cluster)
        self._rounds = itertools.count(1)

    # -- configuration and processes ----------------------------------------------------

    def _config_text(self) -> str:
        lines = [
            f"partitions = {self.partitions}",
            "",
            "[worker]",
            f'group_id = "{self.group_id}"',
            f"shutdown_timeout = {self.shutdown_timeout}",
        ]
        if self.batch_size is not None:
            lines.append(f"batch_size = {self.batch_size}")
        for channel in self.channels:
            nodes = ", ".join(f'"{n}"' for n in channel.nodes)
            lines += [
                "",
                "[[channels]]",
                f'name = "{channel.name}"',
                f"nodes = [{nodes}]",
                f"buffer = {channel.buffer}",
                f"low_stock_threshold = {channel.low_stock_threshold}",
            ]
            if channel.notify is not None:
                lines.append(f'notify = "{channel.notify}"')
            if channel.notify_min_interval_ms is not None:
                lines.append(f"notify_min_interval_ms = {channel.notify_min_interval_ms}")
        for node, safety in self.node_safety.items():
            lines += ["", f"[nodes.{node}]", f"safety_stock = {safety}"]
        if self.extra_config:
            lines += ["", self.extra_config]
        return "\n".join(lines) + "\n"

    def worker_env(self, **overrides: str) -> dict[str, str]:
        """The environment of a worker: only our STOCKSYNC_* variables, port 0."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
        env.update(
            STOCKSYNC_BROKER=self.broker_url,
            STOCKSYNC_REDIS_URL=self.redis_url,
            STOCKSYNC_TOPIC_PREFIX=self.prefix,
            STOCKSYNC_WORKER_PORT="0",
        )
        if self.redis_cluster:
            env["STOCKSYNC_REDIS_CLUSTER"] = "1"
        env.update(overrides)
        return env

    def worker(self, name: str = "w1", **env: str) -> WorkerProcess:
        """A worker process of this deployment (not started); ``env`` overrides variables."""
        assert name not in self.workers, f"worker {name} exists"
        command = [sys.executable, "-m", "stocksync", "--config", str(self.config_path), "worker"]
        found = self.workers[name] = WorkerProcess(
            name, command, self.worker_env(**env), self.workdir / f"worker-{name}.log"
        )
        return found

    def start_api(self) -> ApiReplica:
        """Start one ``stocksync api`` replica of this deployment (not waited for)."""
        command = [sys.executable, "-m", "stocksync", "--config", str(self.config_path), "api"]
        replica = ApiReplica(command, self.worker_env(),
                             self.workdir / f"api-{len(self.apis) + 1}.log")
        self.apis.append(replica)
        return replica

    def rebuild(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``stocksync rebuild ARGS`` with this deployment's configuration."""
        command = [sys.executable, "-m", "stocksync", "--config", str(self.config_path),
                   "rebuild", *args]
        done = subprocess.run(command, env=self.worker_env(), capture_output=True, text=True,
                              timeout=180, check=False)
        self.note(f"rebuild {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def check_api(self, replica: ApiReplica, reference: Reference) -> None:
        """Assert ``replica`` serves exactly the reference model."""
        skus = sorted({sku for sku, _ in reference.model.channels})
        observed = replica.read_model(skus, [c.name for c in self.channels])
        differences = diff_models(reference.model, observed)
        assert not differences, (
            "the API replica differs from the reference model:\n" + "\n".join(differences)
        )

    def start_worker(self, name: str = "w1") -> WorkerProcess:
        """Start a worker and wait until it has its partitions."""
        return self.worker(name).start().wait_ready()

    def note(self, text: str) -> None:
        """Remember a fact to show if the test fails."""
        self.notes.append(text)

    def seed(self) -> int:
        """A random seed for this test (``STOCKSYNC_E2E_SEED`` replays one), noted for failures."""
        given = os.environ.get("STOCKSYNC_E2E_SEED")
        value = int(given) if given else random.randrange(2**32)
        self.note(f"seed = {value} (replay with STOCKSYNC_E2E_SEED={value})")
        return value

    def diagnostics(self) -> list[tuple[str, str]]:
        """Sections for a failure report: notes and each worker's log tail."""
        sections = []
        if self.notes:
            sections.append(("e2e notes", "\n".join(self.notes)))
        for worker in self.workers.values():
            sections.append((
                f"worker {worker.describe()}, log {worker.log_path}",
                worker.tail(80),
            ))
        for replica in self.apis:
            sections.append((f"API replica, log {replica.log_path}", replica.tail(40)))
        return sections

    def close(self) -> None:
        """Stop every worker, the producer and the clients."""
        for worker in self.workers.values():
            worker.close()
        for replica in self.apis:
            replica.close()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._io.run(self._producer.stop(), timeout=30)
        with contextlib.suppress(Exception):
            self._io.run(self._store.close(), timeout=10)
        self._io.close()
        self._redis.close()

    # -- producing ----------------------------------------------------------------------

    async def _started_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            # Producers may send messages far larger than aiokafka's 1 MiB default; the poison
            # tests send 10 MB (the embedded broker takes it without a topic setting).
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, linger_ms=5, max_request_size=16 * 1024 * 1024
            )
            await producer.start()
            self._producer = producer
        return self._producer

    async def _send(self, messages: Sequence[Msg], pause_every: int, pause: float) -> int:
        producer = await self._started_producer()
        futures = []
        for number, msg in enumerate(messages, 1):
            futures.append(await producer.send(
                self.topics[msg.kind],
                key=None if msg.key is None else msg.key.encode(),
                value=msg.value,
                partition=msg.partition,
                headers=list(msg.headers) or None,
            ))
            if pause_every and number % pause_every == 0:
                await asyncio.sleep(pause)
        delivered = await asyncio.gather(*futures)
        self.ledger.extend(
            Landed(msg, meta.topic, meta.partition, meta.offset)
            for msg, meta in zip(messages, delivered, strict=True)
        )
        return len(messages)

    def send(self, messages: Sequence[Msg]) -> None:
        """Produce ``messages`` in order, wait for delivery, record where they landed."""
        self._io.run(self._send(messages, 0, 0.0))

    def send_paced(self, messages: Sequence[Msg], seconds: float) -> concurrent.futures.Future[int]:
        """Start producing ``messages`` spread over about ``seconds``; returns at once."""
        steps = max(1, int(seconds / 0.1))
        every = max(1, -(-len(messages) // steps))
        return self._io.submit(self._send(messages, every, 0.1))

    # -- settling -----------------------------------------------------------------------

    def _sentinel_skus(self, round_: int, tag: str) -> list[str]:
        """One SKU per effects partition, named for this round and source partition."""
        found: dict[int, str] = {}
        for i in itertools.count():
            sku = f"zz-{round_}-{tag}-{i}"
            found.setdefault(effects_partition(sku, self.partitions), sku)
            if len(found) == self.partitions:
                return [found[p] for p in range(self.partitions)]
        raise AssertionError("unreachable")

    def _sentinels(self, round_: int) -> tuple[list[Msg], list[str]]:
        wire, messages, skus = self.wire, [], []
        at = T0 + timedelta(days=1, minutes=round_)
        for p in range(self.partitions):
            stock = self._sentinel_skus(round_, f"s{p}")
            messages.append(bulk("stock", f"zz-{round_}-s{p}",
                                 [wire.adjusted(s, "dc-east", 1, at) for s in stock], partition=p))
            orders = self._sentinel_skus(round_, f"o{p}")
            messages.append(single(wire.created(
                f"zz-{round_}-o{p}", [(str(j), s, 1, "dc-east") for j, s in enumerate(orders)],
                at=at), partition=p))
            returns = self._sentinel_skus(round_, f"r{p}")
            messages.append(single(wire.received(
                f"zz-{round_}-r{p}", "dc-east", [(str(j), 1, s) for j, s in enumerate(returns)],
                at=at), partition=p))
            skus += stock + orders + returns
        return messages, skus

    def settle(self, timeout: float = 90.0) -> None:
        """Wait until the workers applied everything sent so far (see the module docstring)."""
        round_ = next(self._rounds)
        messages, skus = self._sentinels(round_)
        self.send(messages)
        deadline = time.monotonic() + timeout
        while True:
            present = len(self._io.run(self._live_versions(skus)))
            if present == len(skus):
                break
            if time.monotonic() > deadline or not any(w.alive for w in self.workers.values()):
                raise AssertionError(
                    f"only {present} of {len(skus)} sentinel SKUs of round {round_} reached "
                    "Redis; workers: " + "; ".join(w.describe() for w in self.workers.values())
                )
            time.sleep(0.1)
        versions = self._versions()
        while True:
            time.sleep(0.4)
            again = self._versions()
            if again == versions:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"SKU versions still change after {timeout:.0f} s")
            versions = again

    # -- reading Redis --------------------------------------------------------------------

    async def _live_versions(self, skus: Sequence[str]) -> dict[str, int]:
        """Versions of ``skus`` in the live generation (after a rebuild, the new one)."""
        await self._store.resolve()
        return await self._store.load_versions(list(skus))

    async def _served(self) -> list[Served]:
        """Every SKU's served form in the live generation, as an API replica loads it."""
        await self._store.resolve()
        found: list[Served] = []
        cursor = 0
        while True:
            cursor, page = await self._store.served_page(cursor, 1000)
            found += [decode_served(raw) for raw in page]
            if cursor == 0:
                return found

    def _versions(self) -> dict[str, int]:
        return {s.sku: s.version for s in self._io.run(self._served())}

    def namespace(self) -> str:
        """The effective namespace of the live model."""
        return str(self._io.run(self._store.resolve()))

    def read_model(self) -> Observed:
        """Every SKU's served form in Redis, in the oracle's shapes."""
        seen = Observed()
        for served in self._io.run(self._served()):
            sku = served.sku
            seen.versions[sku] = served.version
            details = decode_detail(served.detail)
            if len(details) != len(served.channels):
                seen.problems.append(f"{sku}: {len(details)} node lists for "
                                     f"{len(served.channels)} channels")
            for channel, nodes in zip(served.channels, details, strict=False):
                body = json.loads(channel.document)
                if body["version"] != served.version or body["sku"] != sku:
                    seen.problems.append(f"{sku}/{channel.channel}: inconsistent header")
                if body["available"] != channel.available:
                    seen.problems.append(f"{sku}/{channel.channel}: figure differs from answer")
                seen.channels[(sku, channel.channel)] = ChannelFigures(
                    body["available"], body["status"]
                )
                for node, available, on_hand, reserved, quarantine, safety in nodes:
                    figures = NodeFigures(
                        on_hand=on_hand,
                        reserved=reserved,
                        quarantine=quarantine,
                        safety_stock=safety,
                        available=available,
                    )
                    shown = seen.nodes.setdefault((sku, node), figures)
                    if shown != figures:
                        seen.problems.append(f"{sku}@{node}: differs between channels")
        return seen

    def check_model(self, reference: Reference | None = None) -> Reference:
        """Assert Redis holds exactly the reference model; returns the reference."""
        reference = reference or self.ledger.reference()
        observed = self.read_model()
        differences = diff_models(reference.model, observed)
        assert not differences, (
            f"Redis differs from the reference model after {reference.events} events:\n"
            + "\n".join(differences)
        )
        return reference

    # -- reading the dead-letter topic ---------------------------------------------------

    async def _read_dlq(self, at_least: int, idle: float, timeout: float) -> list[DeadLetterSeen]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            parts = [TopicPartition(self.topics["dlq"], p) for p in range(self.partitions)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            seen: list[DeadLetterSeen] = []
            started = last_new = time.monotonic()
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                now = time.monotonic()
                for records in batch.values():
                    for record in records:
                        seen.append(DeadLetterSeen(
                            json.loads(record.value),
                            record.key,
                            {k: bytes(v) for k, v in record.headers or ()},
                        ))
                        last_new = now
                if len(seen) >= at_least and now - last_new >= idle:
                    return seen
                if now - started > timeout:
                    return seen
        finally:
            await consumer.stop()

    def read_dead_letters(
        self, at_least: int, idle: float = 1.5, timeout: float = 30.0
    ) -> list[DeadLetterSeen]:
        """Every record of the dead-letter topic: reads until ``at_least`` came and then
        nothing more for ``idle`` seconds (end offsets are not trusted on this broker)."""
        return self._io.run(self._read_dlq(at_least, idle, timeout))

    def check_dead_letters(self, reference: Reference, *, exactly_once: bool) -> None:
        """Assert the DLQ holds the expected dead letters and nothing else.

        With ``exactly_once`` False a record may appear more than once (a crash
        between sending dead letters and committing the offset resends them).
        """
        seen = self.read_dead_letters(len(reference.dead))
        want = Counter(letter.spot for letter in reference.dead)
        got = Counter(letter.spot for letter in seen)
        if not exactly_once:
            got = Counter(set(got))
        missing = sorted((want - got).elements())
        extra = sorted((got - want).elements())
        assert not missing and not extra, (
            f"dead letters differ: missing {missing}, unexpected {extra}"
        )


# --- a realistic stream -------------------------------------------------------------------


_REASONS = ("receipt", "cycle_count", "damage", "shrink", "transfer_in", "transfer_out",
            "correction", "other")
_DISPOSITIONS = ("restock", "damaged", "refurbish")


def realistic_stream(
    rng: random.Random,
    wire: Wire,
    events: int,
    *,
    skus: int = 40,
    duplicates: bool = True,
    invalid: bool = True,
) -> list[Msg]:
    """About ``events`` events in messages: stock counts and changes, order and return
    lifecycles, bulk exports, and (unless turned off) producer duplicates and invalid events.

    Times only move forward except snapshot ``as_of`` values, drawn up to half an hour
    back so older counts arrive after newer ones. Snapshot and policy times never tie,
    so the model does not depend on how the broker interleaves different keys.
    """
    pool = [f"SKU-{i:03d}" for i in range(skus)]
    clock = 0.0
    orders: dict[str, dict[str, list[Any]]] = {}  # order_id -> line_id -> [sku, open, node]
    rmas: dict[str, dict[str, list[Any]]] = {}  # rma_id -> line_id -> [sku, received]
    history: list[Msg] = []
    out: list[Msg] = []
    order_ids = itertools.count(1)
    rma_ids = itertools.count(1)
    exports = itertools.count(1)
    count = 0

    def tick() -> float:
        nonlocal clock
        clock += rng.uniform(0.001, 0.05)
        return clock

    def stock_event() -> dict[str, Any]:
        sku, node = rng.choice(pool), rng.choice(NODES)
        roll = rng.random()
        if roll < 0.35:
            now = tick()
            return wire.snapshot(sku, node, rng.randint(0, 200), now - rng.uniform(0, 30), at=now)
        if roll < 0.9:
            delta = rng.choice([d for d in range(-10, 25) if d])
            return wire.adjusted(sku, node, delta, tick(), reason=rng.choice(_REASONS))
        return wire.policy(sku, node, rng.randint(0, 5), tick())

    def new_order() -> tuple[str, dict[str, Any]]:
        order_id = f"o-{next(order_ids)}"
        lines = [
            (str(i), rng.choice(pool), rng.randint(1, 5),
             rng.choice(NODES) if rng.random() < 0.5 else None)
            for i in range(1, rng.randint(1, 3) + 1)
        ]
        channel = rng.choice(("web", "web", "store"))
        orders[order_id] = {i: [s, q, n] for i, s, q, n in lines}
        return order_id, wire.created(order_id, lines, channel=channel, at=tick())

    def order_step() -> dict[str, Any]:
        if not orders or rng.random() < 0.35:
            return new_order()[1]
        order_id = rng.choice(list(orders))
        lines = orders[order_id]
        picked = rng.sample(list(lines), rng.randint(1, len(lines)))
        roll = rng.random()
        if roll < 0.35:
            moves = {i: rng.choice(NODES) for i in picked}
            for i, node in moves.items():
                lines[i][2] = node
            return wire.allocated(order_id, moves, at=tick())
        if roll < 0.6:
            if rng.random() < 0.3:
                del orders[order_id]
                return wire.cancelled(order_id, None, at=tick())
            qtys = {i: rng.randint(1, 4) for i in picked}
            for i, qty in qtys.items():
                lines[i][1] = max(0, lines[i][1] - qty)
            return wire.cancelled(order_id, qtys, at=tick())
        # Shipped: mostly the open quantity, sometimes less, sometimes more (over-shipped).
        qtys = {i: max(1, lines[i][1] + rng.choice((0, 0, 0, -1, 1, 2))) for i in picked}
        for i, qty in qtys.items():
            lines[i][1] = max(0, lines[i][1] - qty)
        node = rng.choice([lines[i][2] for i in picked if lines[i][2]] or list(NODES))
        if all(line[1] == 0 for line in lines.values()):
            del orders[order_id]
        return wire.shipped(order_id, node, qtys, at=tick(), shipment_id=f"s-{order_id}")

    def return_step() -> dict[str, Any]:
        roll = rng.random()
        if not rmas or roll < 0.3:
            rma_id = f"rma-{next(rma_ids)}"
            fresh = {str(i): (rng.choice(pool), rng.randint(1, 3))
                     for i in range(1, rng.randint(1, 2) + 1)}
            if rng.random() < 0.75:
                rmas[rma_id] = {i: [s, 0] for i, (s, _) in fresh.items()}
                return wire.authorized(rma_id, fresh, at=tick(),
                                       order_id=f"o-{rng.randint(1, 50)}")
            rmas[rma_id] = {i: [s, q] for i, (s, q) in fresh.items()}
            return wire.received(rma_id, rng.choice(NODES),
                                 [(i, q, s) for i, (s, q) in fresh.items()], at=tick())
        rma_id = rng.choice(list(rmas))
        lines = rmas[rma_id]
        picked = rng.sample(list(lines), rng.randint(1, len(lines)))
        node = rng.choice(NODES)
        if roll < 0.65:
            receipts: list[tuple[str, int, str | None]] = []
            for i in picked:
                qty = rng.randint(1, 3)
                lines[i][1] += qty
                receipts.append((i, qty, None if rng.random() < 0.6 else lines[i][0]))
            return wire.received(rma_id, node, receipts, at=tick())
        verdicts = [(i, rng.randint(1, 3), rng.choice(_DISPOSITIONS)) for i in picked]
        if rng.random() < 0.4:
            del rmas[rma_id]
        return wire.inspected(rma_id, node, verdicts, at=tick())

    def invalid_message() -> Msg:
        sku = rng.choice(pool)
        base = wire.snapshot(sku, "dc-east", 5, tick())
        choice = rng.randrange(8)
        if choice == 0:
            return single(bad(b'{"type":"stock.snapshot","schema":1,', Reason.MALFORMED_JSON),
                          kind="stock", key=sku)
        if choice == 1:
            return single(bad({**base, "type": "stock.teleported"}, Reason.UNKNOWN_TYPE),
                          kind="stock", key=sku)
        if choice == 2:
            return single(bad({**base, "schema": 2}, Reason.UNSUPPORTED_SCHEMA),
                          kind="stock", key=sku)
        if choice == 3:
            return single(bad({**base, "on_hand": -3}, Reason.INVALID_FIELD),
                          kind="stock", key=sku)
        if choice == 4:
            return single(bad({**base, "sku": "no spaces!"}, Reason.INVALID_FIELD),
                          kind="stock", key=sku)
        if choice == 5:  # an order nobody created: the reference rejects it
            return single(wire.allocated(f"o-missing-{rng.randint(1, 9)}", {"1": "dc-east"},
                                         at=tick()))
        if choice == 6:  # a line the order does not have
            order_id = rng.choice(list(orders)) if orders else "o-1"
            return single(wire.shipped(order_id, "dc-east", {"99": 1}, at=tick()))
        # An order event of another order inside a bulk message.
        order_id, created = new_order()
        stray = wire.cancelled(f"o-{rng.randint(1, 50)}", None, at=tick())
        if stray["order_id"] == order_id:
            stray["order_id"] = "o-elsewhere"
        return bulk("orders", order_id, [created, bad(stray, Reason.KEY_MISMATCH)])

    while count < events:
        roll = rng.random()
        if roll < 0.36:
            msg = single(stock_event())
        elif roll < 0.74:
            msg = single(order_step())
        elif roll < 0.86:
            msg = single(return_step())
        elif roll < 0.90 and duplicates and history:
            msg = rng.choice(history)
            msg = Msg(msg.kind, msg.key, msg.items, msg.is_bulk)
        elif roll < 0.94:
            items: list[Item | dict[str, Any]] = [stock_event() for _ in range(rng.randint(5, 40))]
            if invalid and rng.random() < 0.3:
                broken = {**stock_event(), "node": "bad node"}
                items.insert(rng.randrange(1, len(items)), bad(broken, Reason.INVALID_FIELD))
            msg = bulk("stock", f"export-{next(exports)}", items)
        elif roll < 0.96:
            order_id, created = new_order()
            alloc = {i: rng.choice(NODES) for i in orders[order_id]}
            for i, node in alloc.items():
                orders[order_id][i][2] = node
            msg = bulk("orders", order_id, [created, wire.allocated(order_id, alloc, at=tick())])
        elif invalid:
            msg = invalid_message()
        else:
            msg = single(stock_event())
        if not msg.is_bulk and msg.items[0].reason is None:
            history.append(msg)
        out.append(msg)
        count += len(msg.items)
    return out
