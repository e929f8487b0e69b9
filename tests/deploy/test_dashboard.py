"""The Grafana dashboard and the alert rules in deploy/: panels, data source, metric names.

``promtool`` checks the rules' syntax and behaviour (``.ci/run``); this checks what
promtool cannot: that every metric they query is one the code exports, or one that
deploy/README.md lists as not exported yet.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "stocksync.json"

_METRIC = re.compile(r"\bstocksync_[a-z0-9_]+\b")
_SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")


def defined_metrics() -> set[str]:
    """Every metric name the package defines, with the series names Prometheus derives."""
    names: set[str] = set()
    for source in (ROOT / "stocksync").rglob("*.py"):
        for name in re.findall(r"""["'](stocksync_[a-z0-9_]+)["']""", source.read_text()):
            names.update(name + suffix for suffix in _SUFFIXES)
    return names


def future_metrics() -> set[str]:
    """The names in deploy/README.md's table of metrics not exported yet."""
    text = (DEPLOY / "README.md").read_text()
    section = text.split("## Metrics not exported yet", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    names: set[str] = set()
    for row in rows:
        name = row.split("`")[1]
        names.update(name + suffix for suffix in _SUFFIXES)
    return names


def unknown_metrics(expressions: list[str]) -> set[str]:
    """Metric names in ``expressions`` that are neither defined nor documented as future."""
    known = defined_metrics() | future_metrics()
    return {name for expr in expressions for name in _METRIC.findall(expr)} - known


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def test_the_dashboard_has_panels_with_queries_on_the_provisioned_data_source() -> None:
    found = panels()
    assert len(found) >= 6
    source = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    uid = re.search(r"^\s+uid:\s*(\S+)", source, re.M)
    assert uid is not None
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in found:
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"]["uid"] == uid[1], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert target["datasource"]["uid"] == uid[1]


def test_business_kpis_come_first() -> None:
    first_row = dashboard()["panels"][0]
    assert first_row["type"] == "row" and "Business" in first_row["title"]
    ordered = sorted(panels(), key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    first = " ".join(t["expr"] for p in ordered[:4] for t in p["targets"])
    for kpi in ("stocksync_freshness_seconds_bucket", "stocksync_last_event_produced",
                "stocksync_oversold_positions", "stocksync_holds_active"):  # fmt: skip
        assert kpi in first
    queried = " ".join(expressions())
    for wanted in ("stocksync_events_consumed_total", "stocksync_events_rejected_total",
                   "stocksync_dead_letters_total", "stocksync_holds_total",
                   "stocksync_api_requests_total", "stocksync_api_request_duration_seconds_bucket",
                   "stocksync_api_model_skus"):  # fmt: skip
        assert wanted in queried


def test_every_metric_the_dashboard_queries_exists() -> None:
    assert unknown_metrics(expressions()) == set()


def test_every_metric_the_alerts_query_exists() -> None:
    rules = (DEPLOY / "alerts.yml").read_text()
    exprs = [line for line in rules.splitlines() if not line.lstrip().startswith("#")]
    assert unknown_metrics(exprs) == set()
    for alert in ("FreshnessOverSLO", "ConsumerStalled", "DeadLettersGrowing", "Oversold",
                  "ApiNotReady", "ProbeFailing", "ModelLost"):  # fmt: skip
        assert f"alert: Stocksync{alert}\n" in rules


def test_a_misspelt_metric_is_caught() -> None:
    assert unknown_metrics(["rate(stocksync_event_consumed_total[1m])"]) == {
        "stocksync_event_consumed_total"
    }
    # A metric of the code and one documented as future pass.
    assert unknown_metrics(["stocksync_oversold_positions + stocksync_probe_success"]) == set()


def test_prometheus_and_compose_wire_the_rules_and_the_dashboard() -> None:
    prometheus = (DEPLOY / "prometheus.yml").read_text()
    assert re.search(r"^rule_files:\n\s+- alerts\.yml$", prometheus, re.M)
    compose = (DEPLOY / "compose.yaml").read_text()
    assert "./alerts.yml:/etc/prometheus/alerts.yml:ro" in compose
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in compose
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in compose
    provider = (DEPLOY / "grafana" / "provisioning" / "dashboards" / "stocksync.yml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider
