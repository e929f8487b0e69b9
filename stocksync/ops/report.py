"""The rehearsal's verdict and report: ``summary.json``, the plots as PNG, ``report.html``.

:func:`judge` turns what a :class:`~stocksync.ops.rehearse.Rehearsal`
measured into the summary (totals, percentiles from its HdrHistograms, each
second, each SLO of the profile with its verdict); :func:`write_report`
draws the plots with matplotlib's Agg backend (no display needed) and writes
an HTML page that embeds them, so the page is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram

    from stocksync.ops.rehearse import Rehearsal

__all__ = ["PLOTS", "judge", "write_report"]

#: The plots written, in page order: file stem and caption.
PLOTS: Final = (
    ("throughput", "Throughput: events and requests per second along the ramp"),
    ("freshness", "Event-to-served freshness, by version"),
    ("latency", "API latency percentiles per endpoint"),
    ("errors", "Errors, holds, dead letters and oversold positions per second"),
)
_COLOURS: Final = {
    "stock": "#1f77b4", "orders": "#ff7f0e", "returns": "#2ca02c",
    "single": "#1f77b4", "batch": "#9467bd", "hold": "#d62728", "release": "#8c564b",
}  # fmt: skip


def _pct(histogram: HdrHistogram, percentile: float, scale: float) -> float | None:
    if not histogram.get_total_count():
        return None
    return round(float(histogram.get_value_at_percentile(percentile)) / scale, 6)


def _figures(histogram: HdrHistogram, scale: float, unit: str) -> dict[str, Any]:
    return {
        "count": histogram.get_total_count(),
        f"p50_{unit}": _pct(histogram, 50, scale),
        f"p99_{unit}": _pct(histogram, 99, scale),
        f"p999_{unit}": _pct(histogram, 99.9, scale),
        f"max_{unit}": round(histogram.get_max_value() / scale, 6)
        if histogram.get_total_count()
        else None,
    }


def judge(rehearsal: Rehearsal) -> dict[str, Any]:
    """The summary of a finished rehearsal, with each SLO and the verdict."""
    from stocksync.ops.rehearse import ENDPOINTS, EVENT_KINDS, latency_histogram

    seconds = rehearsal.seconds
    events: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for s in seconds:
        events.update(s.events)
        requests.update(s.requests)
        errors.update(s.errors)
    together = latency_histogram()
    for histogram in rehearsal.latency.values():
        together.add(histogram)
    dead = next((s.dead_letters for s in reversed(seconds) if s.dead_letters is not None), None)
    oversold_seen = [s.oversold for s in seconds if s.oversold is not None]
    oversold = max(oversold_seen) if oversold_seen else None
    actions = sum(events.values()) + sum(requests.values())
    error_ratio = sum(errors.values()) / actions if actions else None
    freshness = _figures(rehearsal.freshness, 1e6, "seconds")
    latency = {name: _figures(rehearsal.latency[name], 1e3, "ms") for name in ENDPOINTS}
    latency["all"] = _figures(together, 1e3, "ms")
    slo = rehearsal.profile.slo
    api_p99 = latency["all"]["p99_ms"]
    api_p999 = latency["all"]["p999_ms"]
    checks = [
        ("freshness_p99_seconds", slo.freshness_p99_seconds, freshness["p99_seconds"], "s"),
        ("api_p99_seconds", slo.api_p99_seconds, None if api_p99 is None else api_p99 / 1e3, "s"),
        (
            "api_p999_seconds",
            slo.api_p999_seconds,
            None if api_p999 is None else api_p999 / 1e3,
            "s",
        ),
        ("error_ratio", slo.error_ratio, error_ratio, ""),
        ("dead_letters", slo.dead_letters, dead, ""),
        ("oversold", slo.oversold, oversold, ""),
    ]
    slos = []
    for name, target, measured, unit in checks:
        if target is None:
            continue
        passed = None if measured is None else measured <= target
        slos.append(
            {
                "name": name,
                "target": target,
                "measured": measured,
                "passed": passed,
                "target_text": f"<= {target:g}{' ' + unit if unit else ''}",
                "measured_text": "-"
                if measured is None
                else f"{measured:.4g}{' ' + unit if unit else ''}",
            }
        )
    verdict = "pass" if all(s["passed"] is True for s in slos) else "fail"
    per_second = []
    for s in seconds:
        per_second.append(
            {
                "second": s.at,
                "multiplier": round(s.multiplier, 3),
                "events": {k: s.events.get(k, 0) for k in EVENT_KINDS},
                "requests": {k: s.requests.get(k, 0) for k in ENDPOINTS},
                "errors": dict(s.errors),
                "freshness_p50_seconds": _pct(s.freshness, 50, 1e6),
                "freshness_p99_seconds": _pct(s.freshness, 99, 1e6),
                "latency_p99_ms": {k: _pct(h, 99, 1e3) for k, h in s.latency.items()},
                "holds_granted": s.holds_granted,
                "holds_refused": s.holds_refused,
                "saturated": s.saturated,
                "dead_letters": s.dead_letters,
                "oversold": s.oversold,
            }
        )
    return {
        "profile": msgspec.to_builtins(rehearsal.profile),
        "duration_seconds": rehearsal.duration,
        "started_at": rehearsal.started_at,
        "target": {
            "api": rehearsal.client.base,
            "broker": rehearsal.settings.broker,
            "worker_metrics": f"{rehearsal.worker}/metrics",
            "channel": rehearsal.channel,
        },
        "totals": {
            "events": {k: events.get(k, 0) for k in EVENT_KINDS},
            "requests": {k: requests.get(k, 0) for k in ENDPOINTS},
            "errors": dict(errors),
            "holds_granted": sum(s.holds_granted for s in seconds),
            "holds_refused": sum(s.holds_refused for s in seconds),
            "saturated": sum(s.saturated for s in seconds),
            "dead_letters": dead,
            "oversold_max": oversold,
        },
        "freshness": {**freshness, "missed": rehearsal.freshness_missed},
        "latency": latency,
        "per_second": per_second,
        "slos": slos,
        "verdict": verdict,
    }


# --- plots ---------------------------------------------------------------------------------


def _plots(summary: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def plain_log(axis: Any) -> None:
        axis.set_yscale("log")
        axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.yaxis.set_minor_formatter(NullFormatter())

    from stocksync.ops.rehearse import ENDPOINTS, EVENT_KINDS

    rows = summary["per_second"]
    xs = [r["second"] + 1 for r in rows]
    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    paths = []

    def save(fig: Any, stem: str) -> None:
        fig.tight_layout()
        path = folder / f"{stem}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    # throughput
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.stackplot(
        xs, *[[r["events"][k] for r in rows] for k in EVENT_KINDS],
        labels=list(EVENT_KINDS), colors=[_COLOURS[k] for k in EVENT_KINDS], alpha=0.8,
    )  # fmt: skip
    top.set_ylabel("events/s sent")
    top.set_title("Events sent per second, by topic")
    ramp = top.twinx()
    ramp.plot(xs, [r["multiplier"] for r in rows], color="black", linestyle="--", label="load x")
    ramp.set_ylabel("multiple of the baseline")
    ramp.set_ylim(bottom=0)
    ramp.grid(False)
    handles, labels = top.get_legend_handles_labels()
    more, names = ramp.get_legend_handles_labels()
    top.legend(handles + more, labels + names, loc="upper left")
    bottom.stackplot(
        xs, *[[r["requests"][k] for r in rows] for k in ENDPOINTS],
        labels=list(ENDPOINTS), colors=[_COLOURS[k] for k in ENDPOINTS], alpha=0.8,
    )  # fmt: skip
    bottom.set_ylabel("requests/s answered")
    bottom.set_xlabel("second of the run")
    bottom.set_title("API requests per second, by endpoint")
    bottom.legend(loc="upper left")
    save(fig, "throughput")

    # freshness
    fig, ax = plt.subplots(figsize=(9, 4))
    for key, label, style in (
        ("freshness_p50_seconds", "p50", "-"),
        ("freshness_p99_seconds", "p99", "-"),
    ):
        ax.plot(xs, [r[key] if r[key] is not None else float("nan") for r in rows],
                style, marker=".", label=label)  # fmt: skip
    target = next(
        (s["target"] for s in summary["slos"] if s["name"] == "freshness_p99_seconds"), None
    )
    if target is not None:
        ax.axhline(target, color="red", linestyle="--", label=f"SLO p99 <= {target:g} s")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("seconds from produce to served")
    ax.set_xlabel("second of the run")
    ax.set_title("Event-to-served freshness (tracer events, by version)")
    ax.legend(loc="upper right")
    save(fig, "freshness")

    # latency
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [n for n in ENDPOINTS if summary["latency"][n]["count"]]
    width = 0.26
    for i, (pct, label) in enumerate((("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))):
        values = [summary["latency"][n][pct] or 0 for n in names]
        positions = [j + (i - 1) * width for j in range(len(names))]
        bars.bar(positions, values, width, label=label)
    bars.set_xticks(range(len(names)), names)
    plain_log(bars)
    bars.set_ylabel("milliseconds")
    bars.set_title("Latency over the whole run")
    api_target = next(
        (s["target"] for s in summary["slos"] if s["name"] == "api_p99_seconds"), None
    )
    if api_target is not None:
        bars.axhline(api_target * 1e3, color="red", linestyle="--", label="SLO p99")
    low, high = bars.get_ylim()
    bars.set_ylim(low, high * 4)  # room for the legend above the bars
    bars.legend(loc="upper left", ncol=4, fontsize=8)
    for name in names:
        values = [r["latency_p99_ms"].get(name) for r in rows]
        lines.plot(xs, [v if v is not None else float("nan") for v in values], marker=".",
                   label=name, color=_COLOURS[name])  # fmt: skip
    plain_log(lines)
    lines.set_ylabel("p99, milliseconds")
    lines.set_xlabel("second of the run")
    lines.set_title("p99 latency per second")
    low, high = lines.get_ylim()
    lines.set_ylim(low, high * 3)
    lines.legend(loc="upper left", ncol=4, fontsize=8)
    save(fig, "latency")

    # errors
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    codes = sorted({code for r in rows for code in r["errors"]})
    base = [0] * len(rows)
    for code in codes:
        values = [r["errors"].get(code, 0) for r in rows]
        top.bar(xs, values, bottom=base, label=code)
        base = [b + v for b, v in zip(base, values, strict=True)]
    if not codes:
        top.text(0.5, 0.5, "no errors", transform=top.transAxes, ha="center", va="center",
                 fontsize=14, color="green")  # fmt: skip
    else:
        top.legend(loc="upper left")
    top.set_ylabel("errors/s")
    top.set_title("Errors per second, by code")
    bottom.bar(xs, [r["holds_granted"] for r in rows], color="#2ca02c", label="holds granted")
    bottom.bar(xs, [-r["holds_refused"] for r in rows], color="#d62728", label="holds refused")
    dlq = bottom.twinx()
    nan = float("nan")
    dlq.plot(xs, [nan if r["dead_letters"] is None else r["dead_letters"] for r in rows],
             color="black", marker=".", label="dead letters (since start)")  # fmt: skip
    dlq.plot(xs, [nan if r["oversold"] is None else r["oversold"] for r in rows],
             color="purple", linestyle="--", label="oversold positions")  # fmt: skip
    dlq.set_ylabel("count")
    dlq.set_ylim(bottom=0, top=max([1, *[(r["dead_letters"] or 0) for r in rows],
                                    *[(r["oversold"] or 0) for r in rows]]) * 1.2)  # fmt: skip
    dlq.grid(False)
    bottom.set_ylabel("holds/s (refused below 0)")
    bottom.set_xlabel("second of the run")
    bottom.set_title("Holds, dead letters and oversold positions")
    handles, labels = bottom.get_legend_handles_labels()
    more, names2 = dlq.get_legend_handles_labels()
    bottom.legend(handles + more, labels + names2, loc="upper left", fontsize=8)
    save(fig, "errors")
    return paths


# --- the page --------------------------------------------------------------------------------


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.pass{color:#1a7f37;font-weight:bold}.fail{color:#c62828;font-weight:bold}
.verdict{font-size:1.6em;padding:.4em .8em;border-radius:6px;display:inline-block}
.verdict.pass{background:#e6f4ea}.verdict.fail{background:#fdecea}img{max-width:100%}
"""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _page(summary: dict[str, Any], images: list[Path]) -> str:
    e = html.escape
    profile = summary["profile"]
    verdict = summary["verdict"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>stocksync rehearsal: {e(profile['name'])} - {verdict}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Peak rehearsal <code>{e(profile['name'])}</code></h1>",
        f"<p class='verdict {verdict}'>verdict: {verdict}</p>",
        f"<p>{e(profile.get('description') or '')}</p>",
        f"<p>Started {e(summary['started_at'])}, {summary['duration_seconds']:g} s, ramp"
        f" {profile['ramp_from']:g}x to {profile['ramp_to']:g}x. API {e(summary['target']['api'])},"
        f" broker {e(summary['target']['broker'])}, channel {e(summary['target']['channel'])}.</p>",
        "<h2>SLOs</h2><table><tr><th>SLO</th><th>target</th><th>measured</th><th>result</th></tr>",
    ]
    for slo in summary["slos"]:
        mark = {True: "pass", False: "fail", None: "fail"}[slo["passed"]]
        word = {True: "pass", False: "FAIL", None: "not measured"}[slo["passed"]]
        parts.append(
            f"<tr><td>{e(slo['name'])}</td><td>{e(slo['target_text'])}</td>"
            f"<td>{e(slo['measured_text'])}</td><td class='{mark}'>{word}</td></tr>"
        )
    parts.append("</table><h2>Latency (ms)</h2><table><tr><th>endpoint</th><th>requests</th>"
                 "<th>p50</th><th>p99</th><th>p99.9</th><th>max</th></tr>")  # fmt: skip
    for name, row in summary["latency"].items():
        parts.append(
            f"<tr><td>{e(name)}</td><td>{row['count']}</td><td>{_cell(row['p50_ms'])}</td>"
            f"<td>{_cell(row['p99_ms'])}</td><td>{_cell(row['p999_ms'])}</td>"
            f"<td>{_cell(row['max_ms'])}</td></tr>"
        )
    f = summary["freshness"]
    t = summary["totals"]
    parts.append(
        "</table><h2>Totals</h2><table>"
        f"<tr><td>events sent</td><td>{sum(t['events'].values())}"
        f" ({', '.join(f'{k} {v}' for k, v in t['events'].items())})</td></tr>"
        f"<tr><td>requests answered</td><td>{sum(t['requests'].values())}</td></tr>"
        f"<tr><td>freshness samples (p50 / p99 / max s)</td><td>{f['count']}"
        f" ({_cell(f['p50_seconds'])} / {_cell(f['p99_seconds'])} / {_cell(f['max_seconds'])}),"
        f" {f['missed']} not served in time</td></tr>"
        f"<tr><td>errors</td><td>{sum(t['errors'].values())}"
        f" {e(json.dumps(t['errors'])) if t['errors'] else ''}</td></tr>"
        "<tr><td>holds granted / refused</td>"
        f"<td>{t['holds_granted']} / {t['holds_refused']}</td></tr>"
        f"<tr><td>dead letters</td><td>{_cell(t['dead_letters'])}</td></tr>"
        f"<tr><td>oversold positions (max)</td><td>{_cell(t['oversold_max'])}</td></tr>"
        "<tr><td>actions not sent (client at its in-flight limit)</td>"
        f"<td>{t['saturated']}</td></tr>"
        "</table>"
    )
    captions = dict(PLOTS)
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        parts.append(
            f"<h2>{e(captions.get(image.stem, image.stem))}</h2>"
            f"<img alt='{e(image.stem)}' src='data:image/png;base64,{data}'>"
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(rehearsal: Rehearsal, summary: dict[str, Any], folder: Path) -> None:
    """Write ``summary.json``, the PNG plots and ``report.html`` into ``folder``."""
    del rehearsal  # everything needed is in the summary
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    images = _plots(summary, folder)
    (folder / "report.html").write_text(_page(summary, images))
