"""Run the API benchmarks: ``python -m benchmarks.api [--json] [--repeat N] [--seconds S]``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Final

from benchmarks.api.batch import BATCH
from benchmarks.api.common import (
    LUA_DIR,
    WrkResult,
    cpu_seconds,
    rss_bytes,
    run_wrk,
    seed,
    wait_http,
)
from stocksync.daemon.services import RedisServer, TansuBroker, free_port

__all__ = ["SCENARIOS", "main"]

#: Throughput scenarios, in the order each round runs them.
SCENARIOS: Final = ("bare", "single", "batch", "naive", "faust")
_MODULES: Final = {
    "bare": "benchmarks.api.bare",
    "single": "benchmarks.api.single",
    "batch": "benchmarks.api.batch",
    "naive": "benchmarks.api.naive",
    "faust": "benchmarks.api.faust_view",
}
_TARGETS: Final = {
    "single_over_bare": 0.9,
    "single_over_naive": 3.0,
    "single_over_faust": 1.8,
    "batch_skus_per_second": 250_000,
    "single_p99_ms": 10.0,
    "memory_rss_bytes": 1_000_000_000,
    "memory_load_seconds": 30.0,
}


def _pin(pid: int | None, cpu: int) -> None:
    if pid is not None:
        os.sched_setaffinity(pid, {cpu})


def _start_server(
    name: str, port: int, redis_url: str, skus: int, broker: str, cpu: int, log: Path
) -> subprocess.Popen[bytes]:
    command = [
        "taskset",
        "-c",
        str(cpu),
        sys.executable,
        "-m",
        _MODULES[name],
        "--port",
        str(port),
        "--redis",
        redis_url,
        "--skus",
        str(skus),
        "--broker",
        broker,
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _measure(
    name: str, args: argparse.Namespace, redis_url: str, broker: str, logs: Path
) -> dict[str, Any]:
    """Start scenario ``name``'s server, warm it up, load it with wrk; its figures."""
    module = importlib.import_module(_MODULES[name])
    port = free_port()
    proc = _start_server(
        name, port, redis_url, args.skus, broker, args.server_cpu, logs / f"{name}.log"
    )
    try:
        wait_http(f"http://127.0.0.1:{port}{module.READY_PATH}", 180, proc)
        url = f"http://127.0.0.1:{port}"
        wrk = {
            "script": LUA_DIR / module.WRK_SCRIPT,
            "connections": args.connections,
            "threads": args.threads,
            "cpu": args.client_cpu,
            "env": {"SKUS": str(args.skus), "BATCH": str(BATCH)},
        }
        run_wrk(url, seconds=args.warmup, **wrk)
        before = cpu_seconds(proc.pid)
        result: WrkResult = run_wrk(url, seconds=args.seconds, **wrk)
        cpu = cpu_seconds(proc.pid) - before
    finally:
        _stop(proc)
    figures = result.as_dict()
    figures["server_cpu_us_per_request"] = cpu / max(1, result.requests) * 1e6
    return figures


def _measure_memory(args: argparse.Namespace, redis_url: str, logs: Path) -> dict[str, Any]:
    """Start the API on the big data set; time to ready, load time it logs, RSS."""
    port = free_port()
    log = logs / "memory.log"
    started = time.perf_counter()
    proc = _start_server("single", port, redis_url, args.memory_skus, "", args.server_cpu, log)
    try:
        ready = wait_http(f"http://127.0.0.1:{port}/readyz", 600, proc)
        rss, peak = rss_bytes(proc.pid)
    finally:
        _stop(proc)
    match = re.search(r"model loaded: (\d+) SKUs in ([\d.]+) s", log.read_text())
    if match is None:
        raise RuntimeError(f"no 'model loaded' line in {log}")
    return {
        "skus": int(match.group(1)),
        "load_seconds": float(match.group(2)),
        "ready_seconds": ready,
        "rss_bytes": rss,
        "peak_rss_bytes": peak,
        "wall_seconds": time.perf_counter() - started,
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over the rounds."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    rps = {name: r["requests_per_second"] for name, r in results["scenarios"].items()}
    summary: dict[str, Any] = {}
    if "single" in rps:
        if "bare" in rps:
            summary["single_over_bare"] = rps["single"] / rps["bare"]
        if "naive" in rps:
            summary["single_over_naive"] = rps["single"] / rps["naive"]
        if "faust" in rps:
            summary["single_over_faust"] = rps["single"] / rps["faust"]
        summary["single_p99_ms"] = results["scenarios"]["single"]["p99_ms"]
    if "batch" in rps:
        summary["batch_skus_per_second"] = rps["batch"] * BATCH
    if "memory" in results:
        summary["memory_rss_bytes"] = results["memory"]["rss_bytes"]
        summary["memory_load_seconds"] = results["memory"]["load_seconds"]
    return summary


def _met(key: str, value: float) -> bool:
    target = _TARGETS[key]
    lower_is_better = key.endswith(("_ms", "_bytes", "_seconds"))
    return value < target if lower_is_better else value >= target


def _print(results: dict[str, Any]) -> None:
    print(f"\nmachine: {results['machine']}")
    print(
        f"wrk: {results['settings']['connections']} connections, "
        f"{results['settings']['seconds']:g} s per run, median of "
        f"{results['settings']['repeat']} rounds; server on CPU "
        f"{results['settings']['server_cpu']}, wrk and Redis/broker on CPU "
        f"{results['settings']['client_cpu']}\n"
    )
    print(f"{'scenario':52s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU us/req':>11s}")
    for name, figures in results["scenarios"].items():
        title = importlib.import_module(_MODULES[name]).TITLE
        print(
            f"{title:52s} {figures['requests_per_second']:9.0f} {figures['p50_ms']:8.2f}"
            f" {figures['p99_ms']:8.2f} {figures['server_cpu_us_per_request']:11.1f}"
        )
    if "memory" in results:
        mem = results["memory"]
        print(
            f"\n(memory) {mem['skus']:,} SKUs x 2 channels: RSS {mem['rss_bytes'] / 1e6:.0f} MB"
            f" (peak {mem['peak_rss_bytes'] / 1e6:.0f} MB), load {mem['load_seconds']:.1f} s,"
            f" ready {mem['ready_seconds']:.1f} s after start"
        )
    print()
    for key, value in results["summary"].items():
        verdict = "met" if _met(key, value) else "MISSED"
        print(f"{key:24s} {value:14,.2f}   target {_TARGETS[key]:,}   {verdict}")


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios, print the table (or JSON); 0 unless a run failed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--json-out", type=Path, help="also write the JSON results to this file")
    parser.add_argument("--only", nargs="*", choices=[*SCENARIOS, "memory"])
    parser.add_argument("--skus", type=int, default=100_000)
    parser.add_argument("--memory-skus", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured wrk run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    args = parser.parse_args(argv)
    chosen = args.only or [*SCENARIOS, "memory"]
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing and set(chosen) != {"memory"}:
        print(
            f"{' and '.join(missing)} not found: install them (Debian: apt-get install wrk "
            "util-linux), or run only the memory scenario (--only memory)",
            file=sys.stderr,
        )
        return 2
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"{_cpu_model()}, Python {platform.python_version()}",
        "settings": {
            k: getattr(args, k)
            for k in ("skus", "memory_skus", "seconds", "repeat", "connections", "threads")
        }
        | {"server_cpu": args.server_cpu, "client_cpu": args.client_cpu},
        "scenarios": {},
    }
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        redis = RedisServer(data_dir=logs / "redis")
        redis.start()
        stack.callback(redis.stop)
        _pin(redis.pid, args.client_cpu)
        note = sys.stderr
        broker_url = ""
        if "faust" in chosen:
            broker = TansuBroker(data_dir=logs / "tansu")
            broker.start()
            stack.callback(broker.stop)
            _pin(broker.pid, args.client_cpu)
            broker_url = broker.url
        throughput = [s for s in SCENARIOS if s in chosen]
        if throughput:
            took = seed(redis.port, 0, args.skus, naive=True)
            print(f"seeded {args.skus:,} SKUs in {took:.1f} s", file=note)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in throughput}
        for round_ in range(args.repeat if throughput else 0):
            order = throughput if round_ % 2 == 0 else throughput[::-1]
            for name in order:
                figures = _measure(name, args, redis.url_for(0), broker_url, logs)
                runs[name].append(figures)
                print(
                    f"round {round_ + 1} {name}: {figures['requests_per_second']:.0f} req/s,"
                    f" p99 {figures['p99_ms']:.2f} ms",
                    file=note,
                )
        results["scenarios"] = {name: _median(runs[name]) for name in throughput}
        results["runs"] = runs
        if "memory" in chosen:
            took = seed(redis.port, 1, args.memory_skus, naive=False)
            print(f"seeded {args.memory_skus:,} SKUs in {took:.1f} s", file=note)
            results["memory"] = _measure_memory(args, redis.url_for(1), logs)
    results["summary"] = _summary(results)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print(results)
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
