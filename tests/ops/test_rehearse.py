"""``stocksync rehearse`` end to end: load on dev's topics and API, the report and verdict."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from tests.ops.conftest import DevStack

pytestmark = pytest.mark.slow

_TINY = """
name = "tiny"
skus = 30
ramp_from = 1.0
ramp_to = 3.0
[baseline]
stock = 8
orders = 4
returns = 2
single = 20
batch = 3
holds = 4
batch_size = 10
"""
_PNG = b"\x89PNG\r\n\x1a\n"


def test_a_short_rehearsal_writes_its_report_and_passes(
    dev_stack: DevStack, tmp_path: Path
) -> None:
    profile = tmp_path / "tiny.toml"
    # SLOs a loaded 2-core CI machine meets too: this test is about the verdict, not speed.
    profile.write_text(
        _TINY
        + "[slo]\nfreshness_p99_seconds = 30\napi_p99_seconds = 5\napi_p999_seconds = 10\n"
    )
    report = tmp_path / "report"
    done = dev_stack.command(
        "rehearse", "--profile", str(profile), "--duration", "8", "--report", str(report),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # Progress each second, then one line per SLO and the verdict.
    assert len(re.findall(r"^rehearse +\d+/8 s +x", done.stderr, re.M)) >= 6, done.stderr
    assert done.stdout.strip().endswith(f"verdict: pass; report in {report}/report.html")

    summary = json.loads((report / "summary.json").read_text())
    assert summary["verdict"] == "pass"
    assert {s["name"] for s in summary["slos"]} == {
        "freshness_p99_seconds", "api_p99_seconds", "api_p999_seconds", "error_ratio",
        "dead_letters", "oversold",
    }  # fmt: skip
    assert all(s["passed"] is True for s in summary["slos"])
    assert len(summary["per_second"]) == 8
    totals = summary["totals"]
    # The ramp's 1x-3x over 8 s: about 2x the baseline on average, each kind sent.
    assert all(totals["events"][kind] > 0 for kind in ("stock", "orders", "returns"))
    assert 0.4 * 20 * 2 * 8 < totals["requests"]["single"] < 1.4 * 20 * 2 * 8
    assert totals["holds_granted"] > 0 and totals["requests"]["release"] > 0
    assert totals["dead_letters"] == 0 and totals["oversold_max"] == 0
    assert totals["errors"] == {}
    assert summary["freshness"]["count"] > 8 and 0 < summary["freshness"]["p99_seconds"] < 30
    for endpoint in ("single", "batch", "hold", "release"):
        figures = summary["latency"][endpoint]
        assert figures["count"] > 0
        assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["p999_ms"] <= figures["max_ms"]
    # The ramp rises: the last second carries more load than the first.
    first, last = summary["per_second"][0], summary["per_second"][-1]
    assert last["multiplier"] > first["multiplier"]
    assert sum(last["requests"].values()) > sum(first["requests"].values())

    pngs = sorted(report.glob("*.png"))
    assert len(pngs) >= 3
    assert all(p.read_bytes().startswith(_PNG) for p in pngs)
    page = (report / "report.html").read_text()
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(embedded) == len(pngs)
    assert all(base64.b64decode(data).startswith(_PNG) for data in embedded)
    assert "verdict: pass" in page
    # Self-contained: nothing fetched from elsewhere.
    assert not re.search(r"""(src|href)=['"]?(https?:|//)""", page) and "<script" not in page


def test_a_profile_whose_slo_fails_exits_1(dev_stack: DevStack, tmp_path: Path) -> None:
    profile = tmp_path / "strict.toml"
    profile.write_text(_TINY + "[slo]\napi_p99_seconds = 0.000001\n")
    report = tmp_path / "strict"
    done = dev_stack.command(
        "rehearse", "--profile", str(profile), "--duration", "3", "--report", str(report),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(
        r"^  api_p99_seconds +[0-9.e-]+ s +target <= 1e-06 s +FAIL$", done.stdout, re.M
    )
    assert "verdict: fail" in done.stdout
    summary = json.loads((report / "summary.json").read_text())
    assert summary["verdict"] == "fail"
    failed = {s["name"] for s in summary["slos"] if s["passed"] is not True}
    assert failed == {"api_p99_seconds"}
    assert "verdict: fail" in (report / "report.html").read_text()


def test_a_bad_profile_is_refused_before_any_load(dev_stack: DevStack, tmp_path: Path) -> None:
    profile = tmp_path / "typo.toml"
    profile.write_text("[baseline]\nstokc = 5\n")
    done = dev_stack.command("rehearse", "--profile", str(profile), cwd=tmp_path)
    assert done.returncode == 2
    assert "profile" in done.stderr and "stokc" in done.stderr
    assert not list(tmp_path.glob("rehearsal-*"))
