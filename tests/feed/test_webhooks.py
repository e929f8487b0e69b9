"""Webhook pieces that need no endpoint: the signature, the backoff, the selection."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from stocksync.codecs.feed import AvailabilityChanged
from stocksync.config.settings import FeedSettings, Secret, WebhookSettings
from stocksync.feed.metrics import FeedMetrics
from stocksync.feed.webhooks import Webhook, sign

__all__: list[str] = []


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'[{"sku":"S"}]'
    want = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", 1700000000, body) == f"sha256={want}"
    assert sign("k", 1700000001, body) != sign("k", 1700000000, body)


def hook(**fields: Any) -> Webhook:
    settings = WebhookSettings(name="m", url="https://x.example/h", secret_file="/dev/null",
                               secret=Secret("k", "test"), **fields)
    return Webhook(settings, FeedSettings(retry_base_ms=100, retry_max_ms=1000),
                   topic="t", dlq_topic="d", consumer=None, producer=None,  # type: ignore[arg-type]
                   store=None, metrics=FeedMetrics())  # type: ignore[arg-type]


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    webhook = hook()
    for attempt, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (12, 1.0)):
        delays = {webhook.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered


def message(channel: str, status: Any) -> AvailabilityChanged:
    return AvailabilityChanged(event_id="e", occurred_at="2026-11-27T09:00:00.000Z", sku="S",
                               channel=channel, available=0, status=status, version=1)


def test_channels_and_statuses_select_messages() -> None:
    everything = hook()
    assert everything.wants(message("store", "low_stock"))
    picky = hook(channels=["web"], statuses=["out_of_stock"])
    assert picky.wants(message("web", "out_of_stock"))
    assert not picky.wants(message("store", "out_of_stock"))
    assert not picky.wants(message("web", "low_stock"))
