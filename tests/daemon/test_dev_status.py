"""dev's status line, from the Prometheus text of the worker and of the API."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from stocksync.agents.metrics import WorkerMetrics
from stocksync.daemon.dev import sample_of, status_line

API = "# TYPE stocksync_api_model_skus gauge\nstocksync_api_model_skus 200.0\n"


def worker_text(metrics: WorkerMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_rates_and_freshness_are_of_the_interval_and_lag_is_age_of_the_newest() -> None:
    metrics = WorkerMetrics()
    metrics.events_consumed.labels("t.stock.v1", "stock.snapshot").inc(100)
    metrics.freshness.observe_many("produced", [4.0] * 100)  # an old backlog
    metrics.last_event_produced.set(1000.0)
    before = sample_of(worker_text(metrics), API, at=1000.0)
    metrics.events_consumed.labels("t.orders.v1", "order.created").inc(40)
    metrics.events_rejected.labels("t.orders.v1", "unknown_order").inc(10)
    metrics.dead_letters.labels("unknown_order", "commerce").inc(6)
    metrics.dead_letters.labels("invalid_field", "erp").inc(4)  # summed over reason, owner
    metrics.freshness.observe_many("produced", [0.04] * 99 + [0.09])
    metrics.freshness.observe_many("occurred", [100.0] * 50)  # not the basis shown
    metrics.last_event_produced.set(1009.5)
    now = sample_of(worker_text(metrics), API, at=1010.0)
    assert status_line(before, now) == (
        "status: 5 events/s, 200 SKUs, 10 dead letters, freshness p99 50 ms, lag 500 ms"
    )


def test_no_events_in_the_interval_says_idle_rather_than_a_growing_lag() -> None:
    metrics = WorkerMetrics()
    metrics.last_event_produced.set(500.0)
    before = sample_of(worker_text(metrics), None, at=1000.0)
    now = sample_of(worker_text(metrics), None, at=1005.0)
    assert status_line(before, now) == (
        "status: 0 events/s, SKUs unknown, 0 dead letters, freshness p99 -, no events: idle"
    )


def test_first_line_without_an_earlier_sample_uses_the_totals() -> None:
    registry = CollectorRegistry()
    Counter("stocksync_dead_letters_total", "d", registry=registry).inc(3)
    Gauge("stocksync_last_event_produced_timestamp_seconds", "l", registry=registry).set(99.0)
    now = sample_of(generate_latest(registry).decode(), API, at=100.0)
    assert status_line(None, now) == (
        "status: 200 SKUs, 3 dead letters, freshness p99 -, lag 1.0 s"
    )
