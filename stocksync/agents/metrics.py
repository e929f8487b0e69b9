"""Prometheus metrics of the worker: business health first (freshness, DLQ, oversell)."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["FastHistogram", "WorkerMetrics"]

_FRESHNESS_BUCKETS = (
    0.0025,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.35,
    0.5,
    0.75,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    3600,
)
_BATCH_BUCKETS = (1, 5, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 50000)


class FastHistogram(Collector):
    """A labelled histogram for hot paths: one bisect per value, a whole batch per call.

    prometheus_client's Histogram takes a lock and a label lookup per observation;
    the applier observes every effect's age, so it records a batch at once here.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.bounds = [float(b) for b in buckets]
        self._series: dict[str, tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, label: str, values: Iterable[float]) -> None:
        """Record every value under ``label``."""
        counts, total = self._series.setdefault(label, ([0] * (len(self.bounds) + 1), [0.0]))
        bounds = self.bounds
        where = bisect.bisect_left
        added = 0.0
        with self._lock:
            for value in values:
                counts[where(bounds, value)] += 1
                added += value
            total[0] += added

    def observe(self, label: str, value: float) -> None:
        """Record one value under ``label``."""
        self.observe_many(label, (value,))

    def collect(self) -> Iterator[Metric]:
        """The Prometheus histogram family (cumulative buckets, sum, count)."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            for label, (counts, total) in self._series.items():
                cumulative = 0
                buckets: list[tuple[str, float]] = []
                for bound, count in zip([*self.bounds, float("inf")], counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                family.add_metric([label], buckets, total[0])
        yield family


class WorkerMetrics:
    """Every metric the worker exports, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "stocksync_events_consumed_total",
            "Valid events read from the source topics.",
            ["topic", "type"],
            registry=r,
        )
        self.events_rejected = Counter(
            "stocksync_events_rejected_total",
            "Invalid events sent to the dead-letter topic.",
            ["topic", "reason"],
            registry=r,
        )
        self.events_skipped = Counter(
            "stocksync_events_skipped_total",
            "Events already applied (redelivered or duplicated by their producer).",
            ["topic", "why"],
            registry=r,
        )
        self.effects_sent = Counter(
            "stocksync_effects_sent_total",
            "Per-SKU effects sent by translators to the effects topic.",
            registry=r,
        )
        self.effects_applied = Counter(
            "stocksync_effects_applied_total", "Per-SKU effects applied.", registry=r
        )
        self.effects_skipped = Counter(
            "stocksync_effects_skipped_total",
            "Per-SKU effects skipped as duplicates (watermark or event id).",
            registry=r,
        )
        self.batch_size = Histogram(
            "stocksync_batch_size",
            "Messages per processed batch.",
            ["stage"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "stocksync_batch_seconds",
            "Time to process one batch, Redis and broker round trips included.",
            ["stage"],
            registry=r,
        )
        self.freshness = FastHistogram(
            "stocksync_freshness_seconds",
            "Age of an event when its effect reached Redis: since it occurred, since produced.",
            "basis",
            _FRESHNESS_BUCKETS,
            r,
        )
        self.last_applied = Gauge(
            "stocksync_last_applied_timestamp_seconds",
            "When the applier last wrote a change to Redis (Unix time).",
            registry=r,
        )
        self.last_event_produced = Gauge(
            "stocksync_last_event_produced_timestamp_seconds",
            "Produce time of the newest source message applied (Unix time); now minus this is lag.",
            registry=r,
        )
        self.redis_retries = Counter(
            "stocksync_redis_retries_total",
            "Redis or broker operations retried after a failure.",
            ["stage"],
            registry=r,
        )
        self.cas_conflicts = Counter(
            "stocksync_cas_conflicts_total",
            "Batches refused because another writer changed a SKU first.",
            registry=r,
        )
        self.holds_converted = Counter(
            "stocksync_holds_total",
            "Checkout holds by outcome; a worker counts those it converted.",
            ["outcome"],
            registry=r,
        ).labels("converted")
        self.oversold = Gauge(
            "stocksync_oversold_positions",
            "SKU-node positions of this worker with on_hand below reserved.",
            registry=r,
        )
        self.skus_written = Counter(
            "stocksync_skus_written_total", "SKU projections written to Redis.", registry=r
        )
        self.topic_incarnations = Counter(
            "stocksync_topic_incarnations_total",
            "Source partitions found to be a new incarnation of their topic (offsets restarted).",
            ["topic"],
            registry=r,
        )
        self.broker_up = Gauge(
            "stocksync_broker_up",
            "1 while the worker reaches the Kafka broker, 0 during an outage.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "stocksync_consumer_lag",
            "Records of an assigned partition not yet committed: high watermark minus the"
            " committed offset (see stocksync.agents.lag).",
            ["topic", "partition"],
            registry=r,
        )
        self.partition_stalled = Gauge(
            "stocksync_consumer_partition_stalled_seconds",
            "Seconds since an assigned partition's committed offset last moved while it"
            " lags; 0 when caught up.",
            ["topic", "partition"],
            registry=r,
        )
        self.model_lost = Gauge(
            "stocksync_model_lost",
            "1 while Redis has lost the model (no identity marker) and this worker waits for"
            " or runs its rebuild from the topics.",
            registry=r,
        )
        self.dead_letters = Counter(
            "stocksync_dead_letters_total",
            "Records written to the dead-letter topic, by reason and owning team ([dlq.owners]).",
            ["reason", "owner"],
            registry=r,
        )
