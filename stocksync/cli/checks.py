"""Commands that check a running deployment from outside: ``probe`` and ``rehearse``."""

from __future__ import annotations

import argparse

from stocksync.cli.launch import run_module
from stocksync.cli.parsing import Commands, Handler, interval, port, seconds

__all__ = ["register"]


def register(commands: Commands) -> None:
    """Add ``probe`` and ``rehearse``."""
    probe = commands.add(
        "probe",
        _ops("stocksync.ops.probe"),
        "time a synthetic event and hold through the real path to the API",
        "Sends a stock event for the reserved probe SKU ([probe] sku) and times it until\n"
        "the API serves its new version; then a hold of one unit and its release. Prints\n"
        "the figures; exits 1 when a step is past its SLO or not served. With --every it\n"
        "probes until stopped and exports stocksync_probe_seconds and\n"
        "stocksync_probe_success on its own /metrics ([probe] host and port).",
    )
    probe_mode = probe.add_mutually_exclusive_group()
    probe_mode.add_argument("--once", action="store_true", help="probe once (the default)")
    probe_mode.add_argument(
        "--every", type=interval, metavar="T", help="probe every T (30s, 2m) until stopped"
    )
    probe.add_argument(
        "--slo",
        type=seconds,
        metavar="S",
        help="event-to-served SLO (default [probe] slo_seconds)",
    )
    probe.add_argument(
        "--hold-slo",
        type=seconds,
        metavar="S",
        help="hold and release SLO (default [probe] hold_slo_seconds)",
    )
    probe.add_argument("--no-holds", dest="holds", action="store_false", help="skip the hold")
    probe.add_argument("--port", type=port, metavar="N", help="port of --every's /metrics")
    _add_target(probe)

    rehearse = commands.add(
        "rehearse",
        _ops("stocksync.ops.rehearse"),
        "rehearse peak load against a deployment and judge it by a profile's SLOs",
        "Drives stock, order and return events to the topics and single, batch and hold\n"
        "requests to the API at once, along the profile's ramp (built-in 'peak': 1x to 10x\n"
        "of a baseline), for --duration seconds; measures event-to-served freshness, API\n"
        "latency per endpoint, errors, holds, dead letters and oversold positions each\n"
        "second, and writes report.html, the plots as PNG and summary.json into --report.\n"
        "Exits 1 when an SLO fails. Its SKUs are named by the profile's sku_prefix\n"
        "(default rehearse-) and stay in the model afterwards.",
    )
    rehearse.add_argument(
        "--profile", default="peak", metavar="P", help="built-in name or TOML file (default peak)"
    )
    rehearse.add_argument(
        "--duration", type=seconds, metavar="S", help="seconds of load (default: the profile's)"
    )
    rehearse.add_argument(
        "--report", metavar="DIR", help="where to write the report (default rehearsal-TIME)"
    )
    rehearse.add_argument(
        "--worker-url",
        metavar="URL",
        help="the worker's health server, for dead letters and oversold positions"
        " (default: the dev setup's, else worker.host and worker.port)",
    )
    _add_target(rehearse)


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api",
        metavar="URL",
        help="the API to look at (default [probe] api_url, else the running dev setup's,"
        " else api.host and api.port)",
    )
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="a file holding an API token (default [probe] token_file)",
    )


def _ops(module: str) -> Handler:
    """A handler calling ``<module>.run(settings, args)`` of an operator tool."""

    def handler(args: argparse.Namespace) -> int:
        return run_module(args, module, "run", args)

    return handler
