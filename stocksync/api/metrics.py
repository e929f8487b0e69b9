"""Prometheus metrics of the API, in a registry of its own.

Requests are counted in plain Python counters on the hot path (a dict lookup
and a few additions, a fraction of what a labelled prometheus_client
histogram costs) and turned into metric families only when ``/metrics`` is
scraped. The model's health comes from :class:`~stocksync.api.model.SyncStatus`
at scrape time too.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from stocksync.api.model import SyncStatus

__all__ = ["HOLD_OUTCOMES", "LATENCY_BUCKETS", "ApiMetrics", "ConnectionStats"]

#: Outcomes of ``stocksync_holds_total`` (api-v1, Holds: metrics). A worker counts
#: ``converted``; each API replica counts the rest.
HOLD_OUTCOMES: Final = ("held", "partial", "insufficient", "conflict", "released", "expired",
                        "converted")

#: Upper bounds (seconds) of the request latency histogram.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
_BUCKET_LABELS: Final = (*(repr(b) for b in LATENCY_BUCKETS), "+Inf")


class _Latencies:
    """Non-cumulative bucket counts and the sum of one (route, status) series."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0


class ConnectionStats:
    """What the connections of one process went through (plain counters, bumped in place)."""

    __slots__ = (
        "body_timeouts",
        "client_gone",
        "header_timeouts",
        "open",
        "refusal_logged_at",
        "refused",
    )

    def __init__(self) -> None:
        self.open = 0
        self.refused = 0
        self.refusal_logged_at = -math.inf
        self.header_timeouts = 0
        self.body_timeouts = 0
        self.client_gone = 0


class ApiMetrics:
    """Request counters and latency histograms by route and status, plus model health."""

    def __init__(
        self,
        status: Callable[[], SyncStatus | None] = lambda: None,
        connections: ConnectionStats | None = None,
        restarts: Callable[[], int] | None = None,
    ) -> None:
        self._status = status
        self.connections = connections if connections is not None else ConnectionStats()
        self._restarts = restarts
        self._series: dict[tuple[str, int], _Latencies] = {}
        self._hold_outcomes: dict[str, int] = dict.fromkeys(HOLD_OUTCOMES, 0)
        self._hold_latency = _Latencies()
        #: Hold figures of the model at scrape time: active holds, holds seen expiring,
        #: and (SKU, channel) holding more than the channel has.
        self.hold_figures: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)
        #: SKUs of the model that are not business stock (the probe's), left out of its size.
        self.synthetic_skus: Callable[[], int] = lambda: 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one request to ``route`` answered with ``status`` after ``seconds``."""
        self.recorder(route)(status, seconds)

    def recorder(self, route: str) -> Callable[[int, float], None]:
        """A function counting requests to ``route``: bound once, called per request."""
        by_status: dict[int, _Latencies] = {}
        series_of = self._series

        def record(status: int, seconds: float) -> None:
            series = by_status.get(status)
            if series is None:
                series = by_status[status] = series_of.setdefault((route, status), _Latencies())
            series.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            series.total += seconds

        return record

    def count_hold(self, outcome: str) -> None:
        """Count one hold request's outcome (``held``, ``partial``, ``insufficient``, ...)."""
        self._hold_outcomes[outcome] += 1

    def observe_hold(self, seconds: float) -> None:
        """Time one hold request (create, extend or release)."""
        series = self._hold_latency
        series.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series.total += seconds

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """Metric families for the registry (the prometheus_client collector protocol)."""
        requests = CounterMetricFamily(
            "stocksync_api_requests",
            "HTTP requests answered, by route template and status.",
            labels=["route", "status"],
        )
        latency = HistogramMetricFamily(
            "stocksync_api_request_duration_seconds",
            "Time from the request reaching the application to its response.",
            labels=["route", "status"],
        )
        for (route, status), series in sorted(self._series.items()):
            labels = [route, str(status)]
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(_BUCKET_LABELS, series.counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            requests.add_metric(labels, cumulative)
            latency.add_metric(labels, buckets, series.total)
        yield requests
        yield latency
        yield from self._hold_families()
        yield from _connection_families(self.connections)
        if self._restarts is not None:
            yield _counter(
                "stocksync_api_process_restarts",
                "API server processes the supervisor restarted after they died.",
                self._restarts(),
            )
        health = self._status()
        if health is not None:
            yield from _health_families(health, self.synthetic_skus())

    def _hold_families(self) -> Iterator[Metric]:
        active, expired, over = self.hold_figures()
        yield _gauge(
            "stocksync_holds_oversold",
            "(SKU, channel) whose active holds exceed the channel's figure before holds"
            " (stock fell after they were granted).",
            over,
        )
        yield _gauge(
            "stocksync_holds_active",
            "Holds with an active line, as this replica sees them.",
            active,
        )
        outcomes = CounterMetricFamily(
            "stocksync_holds",
            "Hold requests by outcome; expired: holds this replica saw expire.",
            labels=["outcome"],
        )
        counts = {**self._hold_outcomes, "expired": expired}
        for outcome in HOLD_OUTCOMES:
            outcomes.add_metric([outcome], counts[outcome])
        yield outcomes
        series = self._hold_latency
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(_BUCKET_LABELS, series.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        latency = HistogramMetricFamily(
            "stocksync_hold_request_seconds",
            "Time to answer a hold request (create, extend, release).",
        )
        latency.add_metric([], buckets, series.total)
        yield latency


def _connection_families(stats: ConnectionStats) -> Iterator[Metric]:
    """Open connections and the ones cut short."""
    yield _gauge("stocksync_api_connections_open", "Open HTTP connections.", stats.open)
    yield _counter(
        "stocksync_api_connections_refused",
        "Connections refused at api.max_connections (answered 503 overloaded).",
        stats.refused,
    )
    timeouts = CounterMetricFamily(
        "stocksync_api_client_timeouts",
        "Connections closed because the client was too slow to send its request.",
        labels=["phase"],
    )
    timeouts.add_metric(["headers"], stats.header_timeouts)
    timeouts.add_metric(["body"], stats.body_timeouts)
    yield timeouts
    yield _counter(
        "stocksync_api_client_disconnects",
        "Requests whose client hung up before sending all of it (not counted as answered).",
        stats.client_gone,
    )


def _health_families(status: SyncStatus, synthetic: int = 0) -> Iterator[Metric]:
    """The model's size (business SKUs only), freshness and sync failures."""
    yield _gauge("stocksync_api_ready", "1 when /readyz answers 200.", float(status.ready))
    yield _gauge(
        "stocksync_model_lost",
        "1 while Redis has lost the model (no identity marker) and this replica serves its"
        " last one (/readyz says model_lost), until it has loaded the rebuilt one.",
        float(status.code == "model_lost"),
    )
    yield _gauge(
        "stocksync_api_redis_connected",
        "1 when the last Redis commands of the model sync succeeded.",
        float(status.connected),
    )
    yield _gauge(
        "stocksync_api_model_skus",
        "SKUs held in memory (the probe's reserved SKU not counted).",
        status.skus - synthetic,
    )
    yield _gauge(
        "stocksync_api_changes_behind",
        "Change-stream entries added to Redis and not yet applied in memory.",
        status.entries_behind,
    )
    yield _gauge(
        "stocksync_api_change_lag_seconds",
        "Age of the oldest change-stream entry not yet applied (0 when caught up).",
        status.lag_seconds,
    )
    since = math.nan if status.last_applied_at is None else time.time() - status.last_applied_at
    yield _gauge(
        "stocksync_api_seconds_since_last_change",
        "Seconds since the model last applied a change (or finished loading).",
        since,
    )
    yield _counter(
        "stocksync_api_model_reloads",
        "Full reloads of the model after the start-up load.",
        status.reloads,
    )
    yield _counter(
        "stocksync_api_redis_errors",
        "Redis commands of the model sync that failed.",
        status.redis_errors,
    )
    yield _counter(
        "stocksync_api_changes_applied",
        "Change-stream entries applied to the model.",
        status.applied_changes,
    )
    yield _counter(
        "stocksync_api_invalid_projections",
        "Stored projections or stream entries skipped because they did not decode.",
        status.invalid_projections,
    )
    yield _counter(
        "stocksync_api_held_rereads",
        "SKUs whose hold lines were read again because a change of them was missed.",
        status.held_rereads,
    )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
