"""Prometheus metrics of ``stocksync feed`` (the names the feed contract lists, and a few more)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["FeedMetrics"]

_DELAY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class FeedMetrics:
    """The feed process's metrics, in a registry of their own."""

    def __init__(self, lag: Callable[[], float] = lambda: 0.0) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "stocksync_feed_messages", "availability.changed messages sent (acknowledged)",
            ["channel"], registry=self.registry,
        )
        self.lag = Gauge(
            "stocksync_feed_lag_seconds",
            "How long the oldest change not yet published has waited",
            registry=self.registry,
        )
        self.lag.set_function(lambda: lag())
        self.delay = Histogram(
            "stocksync_feed_delay_seconds",
            "From a change reaching the read model to its message being acknowledged",
            buckets=_DELAY_BUCKETS, registry=self.registry,
        )
        self.errors = Counter(
            "stocksync_feed_errors", "Rounds of the publisher retried after a failure",
            registry=self.registry,
        )
        self.active = Gauge(
            "stocksync_feed_active", "1 while this process holds the feed's lease",
            registry=self.registry,
        )
        self.deliveries = Counter(
            "stocksync_webhook_deliveries",
            "Webhook POSTs by outcome (delivered, failed attempt, dead_lettered)",
            ["webhook", "outcome"], registry=self.registry,
        )
        self.pending = Gauge(
            "stocksync_webhook_pending", "Messages taken for a webhook and not yet delivered",
            ["webhook"], registry=self.registry,
        )
