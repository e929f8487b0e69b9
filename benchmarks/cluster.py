"""One Redis against a three-master Redis Cluster: the pipeline's (c) and (d), per-core cost.

``python -m benchmarks.cluster [--events N] [--repeat R] [--json]`` starts one
embedded broker, one ``redis-server`` and a three-master Redis Cluster on
loopback, and runs the pipeline scenarios (c) ``pipeline_single`` and (d)
``pipeline_bulk`` of :mod:`benchmarks.pipeline` against each, in interleaved
rounds. It reports events/s and CPU per event (the worker's and Redis's, every
node of the cluster summed) and the cluster/one-Redis ratio of each, from the
same run. On a small machine every process shares the cores, so CPU per event,
not events/s, is the figure that carries over to more cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.pipeline import _machine, _run_scenario

__all__ = ["main"]

SCENARIOS = ("pipeline_single", "pipeline_bulk")


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
    args = parser.parse_args(argv)

    from stocksync.daemon.services import LocalRedisCluster, RedisServer, TansuBroker

    costs: dict[str, dict[str, list[dict[str, float]]]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        TansuBroker(data_dir=Path(tmp) / "broker") as broker,
        RedisServer(data_dir=Path(tmp) / "redis") as redis,
    ):
        cluster = LocalRedisCluster(Path(tmp) / "cluster")
        try:
            cluster.start()
            node = cluster.nodes[0]
            for round_ in range(args.repeat):
                for name in SCENARIOS:
                    for kind, target, clustered in (("redis", redis, False),
                                                    ("cluster", node, True)):
                        print(f"round {round_ + 1}/{args.repeat}: {name} on {kind}...",
                              file=sys.stderr, flush=True)
                        result = _run_scenario(name, broker, target, args.events,
                                               cluster=clustered)
                        cost = _cost(result)
                        if cost is not None:
                            costs.setdefault(name, {}).setdefault(kind, []).append(cost)
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
        if "redis" in medians and "cluster" in medians:
            entry["cluster_over_redis"] = {
                key: medians["cluster"][key] / medians["redis"][key] for key in medians["redis"]
            }
        report["results"][name] = entry
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    machine = report["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}")
    for name, entry in report["results"].items():
        for kind, m in entry["median"].items():
            print(f"{name:<16} {kind:<8} {m['events_per_s']:>9,.0f} events/s  worker"
                  f" {m['worker_us_per_event']:5.1f} us/event  redis"
                  f" {m['redis_us_per_event']:5.1f} us/event")
        ratio = entry.get("cluster_over_redis")
        if ratio:
            print(f"{name:<16} cluster/redis: CPU per event {ratio['total_us_per_event']:.2f}x"
                  f" (worker {ratio['worker_us_per_event']:.2f}x, redis"
                  f" {ratio['redis_us_per_event']:.2f}x), events/s {ratio['events_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
