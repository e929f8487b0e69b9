"""Metrics by route and status, and the JSON access log: off, sampled, all."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis

from stocksync.api.metrics import ApiMetrics
from tests.api.helpers import make_settings, run, serving


def _access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "stocksync.api.access"]


@pytest.mark.parametrize(
    ("mode", "sample", "expected"),
    [("off", 1.0, 0), ("all", 0.0, 3), ("sampled", 1.0, 3), ("sampled", 0.0, 0)],
)
def test_access_log_modes(
    redis_url: str,
    store: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    sample: float,
    expected: int,
) -> None:
    settings = make_settings(redis_url, access_log=mode, access_log_sample=sample)

    async def scenario() -> None:
        async with serving(settings) as client:
            caplog.clear()
            for path in ("/v1/availability/A?channel=web", "/v1/availability/B?channel=web"):
                async with client.get(path, headers={"X-Correlation-ID": "trace-1"}):
                    pass
            async with client.post("/v1/availability/query", json={"skus": ["A"]}):
                pass

    with caplog.at_level(logging.INFO, logger="stocksync.api.access"):
        run(scenario())
    records = _access_records(caplog)
    assert len(records) == expected
    if records:
        first: Any = records[0]
        assert (first.method, first.path, first.status) == ("GET", "/v1/availability/A", 200)
        assert first.query == "channel=web"
        assert first.correlation_id == "trace-1"
        assert first.bytes > 0
        assert first.duration_ms >= 0
        assert getattr(records[1], "status", None) == 404
        assert getattr(records[2], "status", None) == 400


def test_histogram_buckets_are_cumulative() -> None:
    metrics = ApiMetrics()
    for seconds in (0.0001, 0.0004, 0.003, 7.0):
        metrics.observe("/r", 200, seconds)
    text = metrics.render().decode()
    assert (
        'stocksync_api_request_duration_seconds_bucket{le="0.0005",route="/r",status="200"} 2.0'
        in text
    )
    assert (
        'stocksync_api_request_duration_seconds_bucket{le="0.005",route="/r",status="200"} 3.0'
        in text
    )
    assert (
        'stocksync_api_request_duration_seconds_bucket{le="+Inf",route="/r",status="200"} 4.0'
        in text
    )
    assert 'stocksync_api_requests_total{route="/r",status="200"} 4.0' in text


def test_unmatched_routes_share_one_label(redis_url: str, store: redis.Redis) -> None:
    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            for i in range(5):
                async with client.get(f"/random-{i}"):
                    pass
            async with client.get("/metrics") as resp:
                text = await resp.text()
            assert 'stocksync_api_requests_total{route="unmatched",status="404"} 5.0' in text
            assert "random-" not in text

    run(scenario())
