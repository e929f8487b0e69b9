"""One Redis against a three-master Redis Cluster: the pipeline's (c) and (d) and the
API's single and batch scenarios, per-core cost.

``python -m benchmarks.cluster [--events N] [--repeat R] [--workers 1 2] [--json]
[--only pipeline|api]``
starts one embedded broker, one ``redis-server`` and a three-master Redis
Cluster on loopback, and runs against each, in interleaved rounds:

- the pipeline scenarios (c) ``pipeline_single`` and (d) ``pipeline_bulk`` of
  :mod:`benchmarks.pipeline` with each of ``--workers`` (default 1 and 2) worker
  processes in one consumer group on the same partitions: events/s and CPU per
  event (the workers' summed and Redis's, every node of the cluster summed), with
  the cluster/one-Redis and N workers/1 worker ratios;
- the API's ``api_single`` (``GET /v1/availability/{sku}``) and ``api_batch``
  (``POST /v1/availability/query``, 50 SKUs) through ``stocksync api`` with 1
  and 2 processes, over ``--skus`` SKUs written through the store: requests/s
  and CPU per request (the API processes' and Redis's), wrk pinned to CPU 0.

Each with the cluster/one-Redis ratio from the same run. On a small machine every
process shares the cores, so CPU per event or request, not events/s, is the
figure that carries over to more cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.pipeline import _machine, _run_scenario, services

__all__ = ["main"]

SCENARIOS = ("pipeline_single", "pipeline_bulk")
API_SCENARIOS = ("api_single", "api_batch")


def _cost(result: dict[str, Any]) -> dict[str, float] | None:
    if "events" not in result:
        return None
    events = float(result["events"])
    worker = float(result["cpu_seconds"]) / events * 1e6
    redis = float(result["redis_cpu_seconds"]) / events * 1e6
    return {
        "events_per_s": float(result["events_per_s"]),
        "worker_us_per_event": worker,
        "redis_us_per_event": redis,
        "total_us_per_event": worker + redis,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the table (or JSON)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--only", choices=("pipeline", "api"), help="run one half only")
    parser.add_argument("--skus", type=int, default=20_000, help="SKUs the API serves")
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk seconds per API run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker processes of each pipeline run (default: 1 2)")
    args = parser.parse_args(argv)

    from stocksync.daemon.services import LocalRedisCluster

    costs: dict[str, dict[str, list[dict[str, float]]]] = {}
    with services() as (tmp, broker, redis):
        cluster = LocalRedisCluster(tmp / "cluster")
        try:
            cluster.start()
            node = cluster.nodes[0]
            if args.only != "pipeline":
                _api_rounds(args, redis, cluster, tmp, costs)
            for round_ in range(args.repeat if args.only != "api" else 0):
                for name in SCENARIOS:
                    for workers in args.workers:
                        for kind, target, clustered in (("redis", redis, False),
                                                        ("cluster", node, True)):
                            label = f"{kind}-{workers}w"
                            print(f"round {round_ + 1}/{args.repeat}: {name} on {label}...",
                                  file=sys.stderr, flush=True)
                            result = _run_scenario(name, broker, target, args.events,
                                                   cluster=clustered, workers=workers)
                            cost = _cost(result)
                            if cost is not None:
                                costs.setdefault(name, {}).setdefault(label, []).append(cost)
                            redis.flushall()
                            cluster.flush()
        finally:
            cluster.stop()
    report: dict[str, Any] = {"machine": _machine(), "events": args.events, "results": {}}
    for name, kinds in costs.items():
        medians = {
            kind: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            for kind, runs in kinds.items()
        }
        entry: dict[str, Any] = {"median": medians, "rounds": kinds}
        if not name.startswith("api_"):
            entry.update(_pipeline_ratios(medians, args.workers))
        report["results"][name] = entry
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    machine = report["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}")
    for name, entry in report["results"].items():
        if name.startswith("api_"):
            _print_api(name, entry)
            continue
        for kind, m in entry["median"].items():
            print(f"{name:<16} {kind:<11} {m['events_per_s']:>9,.0f} events/s  workers"
                  f" {m['worker_us_per_event']:5.1f} us/event  redis"
                  f" {m['redis_us_per_event']:5.1f} us/event")
        for title, ratios in (("cluster/redis", entry["cluster_over_redis"]),
                              ("workers", entry["workers_over_one"])):
            for label, ratio in ratios.items():
                print(f"{name:<16} {title} {label}: CPU per event"
                      f" {ratio['total_us_per_event']:.2f}x (workers"
                      f" {ratio['worker_us_per_event']:.2f}x, redis"
                      f" {ratio['redis_us_per_event']:.2f}x), events/s"
                      f" {ratio['events_per_s']:.2f}x")
    return 0


def _pipeline_ratios(
    medians: dict[str, dict[str, float]], workers: list[int]
) -> dict[str, dict[str, dict[str, float]]]:
    """cluster/one-Redis per worker count, and N workers/1 worker per store."""
    def over(a: str, b: str) -> dict[str, float] | None:
        if a not in medians or b not in medians:
            return None
        return {key: medians[a][key] / medians[b][key] for key in medians[b]}

    cluster_over_redis = {
        f"{w}w": r for w in workers if (r := over(f"cluster-{w}w", f"redis-{w}w")) is not None
    }
    workers_over_one = {
        f"{kind} {w}w/1w": r
        for kind in ("redis", "cluster")
        for w in workers
        if w != 1 and (r := over(f"{kind}-{w}w", f"{kind}-1w")) is not None
    }
    return {"cluster_over_redis": cluster_over_redis, "workers_over_one": workers_over_one}


def _print_api(name: str, entry: dict[str, Any]) -> None:
    for kind, m in entry["median"].items():
        print(f"{name:<16} {kind:<10} {m['requests_per_s']:>9,.0f} req/s  API"
              f" {m['api_us_per_request']:6.1f} us/req  redis"
              f" {m['redis_us_per_request']:5.1f} us/req  p99 {m['p99_ms']:.2f} ms  idle:"
              f" API {m['idle_api_cores']:.3f} cores, redis {m['idle_redis_cores']:.3f}")
    for processes in (1, 2):
        one, many = f"redis-{processes}p", f"cluster-{processes}p"
        if one in entry["median"] and many in entry["median"]:
            a, b = entry["median"][one], entry["median"][many]
            print(f"{name:<16} {processes} process(es) cluster/redis: CPU per request"
                  f" {b['total_us_per_request'] / a['total_us_per_request']:.2f}x,"
                  f" req/s {b['requests_per_s'] / a['requests_per_s']:.2f}x")


def _seed_store(url: str, cluster: bool, skus: int) -> None:
    """``skus`` SKUs written through the store, as the worker writes them."""
    import asyncio

    from benchmarks.api.common import NAMESPACE, sku_name
    from benchmarks.api.single import settings
    from stocksync.codecs.state import NodePosition, Position
    from stocksync.readmodel import core
    from stocksync.store import RedisStore, Write
    from stocksync.store.layout import Keys

    topology = core.topology_of(settings(0, url))

    async def main() -> None:
        store = RedisStore.from_url(url, Keys(NAMESPACE), topology=topology, cluster=cluster)
        try:
            await store.begin_generation("g-benchmark")
            writes = [
                Write(Position(sku=sku_name(i), version=1, nodes={
                    "dc-east": NodePosition(snap=i % 400), "dc-west": NodePosition(snap=i % 17),
                }), 0)
                for i in range(skus)
            ]
            assert await store.write_batch(writes, announce=False) == []
        finally:
            await store.close()

    asyncio.run(main())


def _api_rounds(
    args: argparse.Namespace,
    redis: Any,
    cluster: Any,
    tmp: Path,
    costs: dict[str, dict[str, list[dict[str, float]]]],
) -> None:
    """The API scenarios, 1 and 2 processes, on one Redis and on the cluster."""
    import os
    import signal
    import subprocess
    import time

    import msgspec

    from benchmarks.api.common import LUA_DIR, cpu_seconds, run_wrk, wait_http
    from benchmarks.api.single import settings
    from benchmarks.holds import _cpu, _tree
    from stocksync.daemon.services import free_port

    _seed_store(redis.url, False, args.skus)
    _seed_store(cluster.url, True, args.skus)
    cluster_pids = [n.pid for n in cluster.nodes if n.pid is not None]
    for round_ in range(args.repeat):
        for name, script in (("api_single", "single.lua"), ("api_batch", "batch.lua")):
            for processes in (1, 2):
                for kind, url, clustered, pids in (
                    ("redis", redis.url, False, [redis.pid]),
                    ("cluster", cluster.url, True, cluster_pids),
                ):
                    label = f"{kind}-{processes}p"
                    print(f"round {round_ + 1}/{args.repeat}: {name} on {label}...",
                          file=sys.stderr, flush=True)
                    port = free_port()
                    config = tmp / f"api-{label}.json"
                    chosen = msgspec.structs.replace(
                        settings(port, url), redis_cluster=clustered
                    )
                    config.write_bytes(msgspec.json.encode(chosen))
                    with (tmp / f"api-{label}.log").open("ab") as log:
                        proc = subprocess.Popen(
                            [sys.executable, "-m", "benchmarks.cluster", "serve-api",
                             str(config), str(processes)],
                            stdout=log, stderr=subprocess.STDOUT,
                        )
                    try:
                        wait_http(f"http://127.0.0.1:{port}/readyz", 120, proc)
                        time.sleep(1.0 + processes)  # every process loads its model
                        env = {"SKUS": str(args.skus), "BATCH": "50"}
                        target = f"http://127.0.0.1:{port}"
                        # Idle: what following the change stream(s) costs with no request
                        # (a cluster's 12 streams are polled every 10 ms).
                        tree = _tree(proc.pid)
                        idle = _cpu(tree), sum(cpu_seconds(p) for p in pids), time.monotonic()
                        time.sleep(3.0)
                        idle_api = (_cpu(tree) - idle[0]) / (time.monotonic() - idle[2])
                        idle_redis = (sum(cpu_seconds(p) for p in pids) - idle[1]) / (
                            time.monotonic() - idle[2]
                        )
                        run_wrk(target, script=LUA_DIR / script, seconds=1, connections=32,
                                threads=1, cpu=0, env=env)
                        tree = _tree(proc.pid)
                        before = _cpu(tree), sum(cpu_seconds(p) for p in pids)
                        result = run_wrk(target, script=LUA_DIR / script, seconds=args.seconds,
                                         connections=32, threads=1, cpu=0, env=env)
                        api = _cpu(tree) - before[0]
                        redis_cpu = sum(cpu_seconds(p) for p in pids) - before[1]
                    finally:
                        if proc.poll() is None:
                            os.kill(proc.pid, signal.SIGTERM)
                            proc.wait(30)
                    if result.non_2xx or result.socket_errors:
                        raise RuntimeError(f"{name} on {label}: {result}")
                    requests = max(1, result.requests)
                    costs.setdefault(name, {}).setdefault(label, []).append({
                        "requests_per_s": result.requests_per_second,
                        "p99_ms": result.p99_ms,
                        "api_us_per_request": api / requests * 1e6,
                        "redis_us_per_request": redis_cpu / requests * 1e6,
                        "total_us_per_request": (api + redis_cpu) / requests * 1e6,
                        "idle_api_cores": idle_api,
                        "idle_redis_cores": idle_redis,
                    })


def _serve_api(config: str, processes: int) -> None:
    import logging

    import msgspec

    from stocksync.api.server import run
    from stocksync.config.settings import Settings

    logging.basicConfig(level=logging.WARNING)
    settings = msgspec.json.decode(Path(config).read_bytes(), type=Settings)
    sys.exit(run(settings, processes=processes))


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-api"]:
        _serve_api(sys.argv[2], int(sys.argv[3]))
    raise SystemExit(main())
