"""Checkout holds under load: ``python -m benchmarks.holds [--json] [--seconds S]``.

Every scenario runs in the same run, on the same seeded Redis, each server fresh:

- ``hold``: ``POST /v1/holds`` (one unit of a random SKU, partial) through
  ``stocksync api --processes 2``;
- ``evalsha``: a bare aiohttp handler doing one Redis ``EVALSHA`` of a trivial
  script (one ``HGET``) per request, sent as the hold store sends its one call,
  in two processes on one port: the issue's floor;
- ``bare_hold``: the same bare handler, but reading the POST body as the hold
  benchmark sends it and running the hold's own script
  (:data:`~stocksync.store.scripts.CREATE_HOLD`) on the same keys and
  arguments: the floor of a hold, so the ratio measures what the API adds to
  the one script call (validation, answer, following its own change stream);
- ``get`` and ``get_held``: ``GET /v1/availability/{sku}`` over SKUS_GET SKUs
  through ``api --processes 2``, without holds and with 1,000 active holds on
  exactly those SKUs (every answer is one less its holds);
- ``hot``: a flash sale on one SKU (HOT_SKU, stocked with more units than any run
  holds) through ``api --processes 2``, once per count of ``--hot-counts``: that
  many holds of it set up first (TTL 1 h), then ``--hot-connections`` connections
  each holding one unit of it and releasing a hold it was granted before its next
  one (``benchmarks/api/lua/hold_hot.lua``), so the SKU keeps about that many
  active holds. Reported per count: holds/s, API and Redis CPU per hold (a grant
  and its release), Redis's own time per script call (``INFO commandstats``), and
  each as a ratio to the first count (normally 0) of the same run.

Each of the others at 32 and 64 connections, saturated (every connection sends its
next request as soon as it has the answer); ``hold`` and ``bare_hold`` also at 64
connections paced: each connection waits between its requests a time drawn from an
exponential distribution of mean ``--pace-ms`` (about 1,000 requests/s offered),
so requests arrive independently, as storefront shoppers send them, and the p99 is
the service time rather than a queue. (A constant wait keeps the 64 connections in
lock-step: they arrive as bursts of 64, and p99 is the burst's queue.) Reported:
requests/s, p50/p99, the CPU time per request of the server processes, of Redis
and of the load generator (wrk, in C, on CPU 0), and the ratios the issue sets
targets for. Nothing else is pinned: two server processes, wrk and Redis share
the machine's two cores, as a small deployment would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

from benchmarks.api.common import (
    LUA_DIR,
    NAMESPACE,
    cpu_seconds,
    run_wrk,
    seed,
    sku_name,
    wait_http,
)
from stocksync.daemon.services import RedisServer, free_port

__all__ = ["main"]

#: SKUs the GET scenarios ask for (and get_held holds one unit of each).
SKUS_GET: Final = 1000
_TARGETS: Final = {
    "hold_p99_ms_at_64": 10.0,
    "hold_p99_ms_at_64_paced": 10.0,
    "hold_over_evalsha_at_64": 0.8,
    "hold_over_bare_hold_at_64": 0.8,
    "get_held_over_get_at_64": 0.9,
}
_BARE_BODY: Final = b'{"sku":"SKU-0000001","channel":"web","available":118,"held":0}'
#: The hot scenario's SKU, and the units it is stocked with on each channel.
HOT_SKU: Final = sku_name(0)
HOT_STOCK: Final = 10_000_000
SCENARIOS: Final = ("evalsha", "bare_hold", "hold", "get", "get_held", "hot")


def _settings_json(port: int, redis_url: str) -> str:
    import msgspec

    from benchmarks.api.single import settings

    return msgspec.json.encode(settings(port, redis_url)).decode()


def _serve_api(settings_json: str) -> None:
    import logging

    import msgspec

    from stocksync.api.server import run
    from stocksync.config.settings import Settings

    logging.basicConfig(level=logging.WARNING)
    sys.exit(run(msgspec.json.decode(settings_json, type=Settings), processes=2))


def _serve_bare(port: int, redis_url: str, mode: str) -> None:
    """Two processes on one port, each: aiohttp on uvloop, one EVALSHA per request.

    ``mode`` ``evalsha``: a trivial script; ``hold``: the POST body decoded and the
    hold's own script run with the arguments the hold store would pass.
    """
    import hiredis
    import msgspec
    import redis.asyncio as aioredis
    import uvloop
    from aiohttp import web

    from stocksync.readmodel.holds import fingerprint
    from stocksync.store import scripts
    from stocksync.store.layout import Keys

    script = scripts.CREATE_HOLD if mode == "hold" else "return redis.call('HGET', KEYS[1], 'v')"
    key = f"{NAMESPACE}:sku:{{{sku_name(1)}}}"
    keys = Keys(NAMESPACE)
    decode = msgspec.json.Decoder().decode
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            break
        children.append(pid)
    else:
        signal.signal(signal.SIGTERM, lambda *_: [os.kill(c, signal.SIGTERM) for c in children])
        for child in children:
            os.waitpid(child, 0)
        return

    async def start(app: web.Application) -> Any:
        client = aioredis.Redis.from_url(redis_url)
        app["sha"] = await client.script_load(script)
        app["client"] = client
        app["idle"] = []
        app["slots"] = asyncio.Semaphore(32)
        try:
            from stocksync.store.multiplex import Multiplexed
        except ImportError:  # a tree from before the hold store pipelined its calls
            app["pipe"] = None
        else:
            app["pipe"] = Multiplexed(client, 5.0)
        yield
        if app["pipe"] is not None:
            await app["pipe"].close()
        for connection in app["idle"]:
            await connection.disconnect()
        await client.aclose()

    async def call(app: web.Application, packed: bytes) -> Any:
        # One EVALSHA the way the hold store sends its calls, so the baseline pays what
        # a hold's call pays: on the store's pipelined connection where it has one,
        # else packed by hiredis on kept connections behind a semaphore.
        pipe = app["pipe"]
        if pipe is not None:
            return await pipe.call(packed)
        async with app["slots"]:
            idle = app["idle"]
            connection = idle.pop() if idle else app["client"].connection_pool.make_connection()
            await connection.send_packed_command(packed)
            reply = await connection.read_response()
            idle.append(connection)
            return reply

    async def handle(request: web.Request) -> web.Response:
        if mode == "evalsha":
            await call(request.app, hiredis.pack_command(("EVALSHA", request.app["sha"], 1, key)))
            return web.Response(body=_BARE_BODY, content_type="application/json")
        if request.method != "POST":  # the readiness probe
            return web.Response(body=b"{}", content_type="application/json")
        req = decode(await request.read())
        hold_id, channel = req["hold_id"], req["channel"]
        line = req["lines"][0]
        sku, qty = line["sku"], line["qty"]
        packed = hiredis.pack_command(
            (
                "EVALSHA",
                request.app["sha"],
                4,
                keys.hold(hold_id),
                keys.changes(),
                keys.sku(sku),
                keys.held(sku),
                fingerprint(channel, [(sku, qty)]),
                channel,
                req["ttl_seconds"] * 1000,
                1,
                86_400_000,
                1_000_000,
                hold_id,
                1,
                sku,
                qty,
            )
        )
        reply = await call(request.app, packed)
        return web.Response(
            status=201,
            body=b'{"hold_id":"%s","status":"%s"}' % (hold_id.encode(), reply[2]),
            content_type="application/json",
        )

    app = web.Application()
    app.cleanup_ctx.append(start)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        reuse_port=True,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "benchmarks.holds", *args], stdout=out, stderr=subprocess.STDOUT
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the API's forked server processes)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            found += _tree(int(child))
    return found


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(pid)
    return total


def _children_cpu() -> float:
    """User + system CPU of the waited-for children so far: wrk's, as run_wrk waits for it."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _post_hold(url: str, body: dict[str, Any], timeout: float) -> None:
    """``POST /v1/holds`` of ``body``; it must be granted (200 or 201)."""
    req = urllib.request.Request(
        url + "/v1/holds",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        assert resp.status in (200, 201), resp.status


def _hold_some(url: str, count: int) -> None:
    """``count`` active holds, one unit each of SKU 0 .. count-1."""
    for i in range(count):
        body = {
            "hold_id": f"standing-{i}",
            "channel": "web",
            "ttl_seconds": 3600,
            "partial": True,
            "lines": [{"sku": sku_name(i), "qty": 1}],
        }
        _post_hold(url, body, timeout=5)


def _stock_hot(port: int, db: int) -> None:
    """Give HOT_SKU HOT_STOCK units on every channel (its served form, as the worker writes it)."""
    import msgspec
    import redis

    from benchmarks.api.common import projections
    from stocksync.store.layout import SERVED_FIELD, VERSION_FIELD, Keys
    from stocksync.store.served import served_from_channels

    proj = next(projections(1))
    assert proj.sku == HOT_SKU
    channels = [
        msgspec.structs.replace(c, available=HOT_STOCK, status="in_stock") for c in proj.channels
    ]
    raw = served_from_channels(proj.sku, proj.version, channels)
    with redis.Redis(port=port, db=db) as client:
        client.hset(
            Keys(NAMESPACE).sku(HOT_SKU), mapping={VERSION_FIELD: proj.version, SERVED_FIELD: raw}
        )


def _hold_hot(url: str, count: int) -> None:
    """``count`` active holds of one unit of HOT_SKU each, TTL 1 h, 8 at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> None:
        body = {
            "hold_id": f"standing-hot-{i}",
            "channel": "web",
            "ttl_seconds": 3600,
            "lines": [{"sku": HOT_SKU, "qty": 1}],
        }
        _post_hold(url, body, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def _held_now(url: str) -> int:
    """What HOT_SKU's answer on ``web`` says is held."""
    with urllib.request.urlopen(f"{url}/v1/availability/{HOT_SKU}?channel=web", timeout=5) as r:
        return int(json.loads(r.read())["held"])


def _script_stats(port: int) -> tuple[int, int]:
    """Redis's own count and microseconds of EVALSHA calls so far (INFO commandstats)."""
    import redis

    with redis.Redis(port=port) as client:
        found = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(found.get("calls", 0)), int(found.get("usec", 0))


def _measure_hot(
    redis_url: str,
    redis_port: int,
    redis_pid: int,
    logs: Path,
    args: argparse.Namespace,
    run: int,
    count: int,
) -> dict[str, Any]:
    """One count of the hot scenario: holds of HOT_SKU with ``count`` active holds on it."""
    port = free_port()
    proc = _start(["serve-api", _settings_json(port, redis_url)], logs / f"hot-{count}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/readyz", 120, proc)
        time.sleep(1.0)  # the second process loads its model too
        started = time.perf_counter()
        _hold_hot(url, count)
        setup_s = time.perf_counter() - started
        time.sleep(0.5)
        script = LUA_DIR / "hold_hot.lua"
        env = {"HOT_SKU": HOT_SKU, "RUN": f"{run}w{count}"}
        # A timed-out request would leave its hold active (and the count off): wait for all.
        def hot_wrk(seconds: float, env: dict[str, str]) -> Any:
            return run_wrk(
                url,
                script=script,
                seconds=seconds,
                connections=args.hot_connections,
                threads=1,
                cpu=0,
                env=env,
                timeout_s=30,
            )

        hot_wrk(args.warmup, env)
        pids = _tree(proc.pid)
        before = _cpu(pids), _cpu([redis_pid]), _script_stats(redis_port)
        result = hot_wrk(args.seconds, {**env, "RUN": f"{run}m{count}"})
        server, redis_cpu = _cpu(pids) - before[0], _cpu([redis_pid]) - before[1]
        calls, usec = _script_stats(redis_port)
        calls, usec = calls - before[2][0], usec - before[2][1]
        if result.non_2xx or result.socket_errors:
            raise RuntimeError(f"hot {count}: {result}")
        holds = result.counter("holds")
        time.sleep(0.5)
        held = _held_now(url)
        if held < count:
            raise RuntimeError(f"hot {count}: only {held} units held after the run")
    finally:
        _stop(proc)
    return result.as_dict() | {
        "holds": holds,
        "holds_per_second": holds / args.seconds,
        "server_cpu_us_per_hold": server / max(1, holds) * 1e6,
        "redis_cpu_us_per_hold": redis_cpu / max(1, holds) * 1e6,
        # Redis's own time in the hold scripts (grant, release), per call.
        "redis_script_us_per_call": usec / max(1, calls),
        "script_calls_per_hold": calls / max(1, holds),
        "held_after": held,
        "setup_seconds": setup_s,
    }


def _measure(
    scenario: str,
    redis_url: str,
    redis_pid: int,
    logs: Path,
    args: argparse.Namespace,
    run: int,
) -> dict[str, dict[str, Any]]:
    port = free_port()
    if scenario in ("evalsha", "bare_hold"):
        mode = "hold" if scenario == "bare_hold" else "evalsha"
        proc = _start(["serve-bare", str(port), redis_url, mode], logs / f"{scenario}.log")
        ready = "/healthz"
    else:
        proc = _start(["serve-api", _settings_json(port, redis_url)], logs / f"{scenario}.log")
        ready = "/readyz"
    url = f"http://127.0.0.1:{port}"
    figures: dict[str, dict[str, Any]] = {}
    try:
        wait_http(url + ready, 120, proc)
        time.sleep(1.0)  # the second process loads its model too
        if scenario == "get_held":
            _hold_some(url, SKUS_GET)
            time.sleep(0.5)
        posts = scenario in ("hold", "bare_hold")
        script = LUA_DIR / ("hold.lua" if posts else "single.lua")
        skus = args.skus if posts else SKUS_GET
        # (connections, label, pace): saturated at 32 and 64, and the hold calls also
        # at 64 paced (each connection waits pace_ms between requests) below saturation.
        runs: list[tuple[int, str, int]] = [(32, "32", 0), (64, "64", 0)]
        if posts:
            runs.append((64, "64paced", args.pace_ms))
        for connections, label, pace in runs:
            env = {"SKUS": str(skus), "RUN": f"{run}x{label}", "PACE_MS": str(pace)}
            run_wrk(
                url,
                script=script,
                seconds=args.warmup,
                connections=connections,
                threads=1,
                cpu=0,
                env=env,
            )
            pids = _tree(proc.pid)
            before = _cpu(pids), _cpu([redis_pid]), _children_cpu()
            result = run_wrk(
                url,
                script=script,
                seconds=args.seconds,
                connections=connections,
                threads=1,
                cpu=0,
                env={**env, "RUN": f"{run}m{label}"},
            )
            server, redis_cpu = _cpu(pids) - before[0], _cpu([redis_pid]) - before[1]
            client = _children_cpu() - before[2]
            if result.non_2xx or result.socket_errors:
                raise RuntimeError(f"{scenario}: {result}")
            figures[label] = result.as_dict() | {
                "server_cpu_us_per_request": server / max(1, result.requests) * 1e6,
                "redis_cpu_us_per_request": redis_cpu / max(1, result.requests) * 1e6,
                "client_cpu_us_per_request": client / max(1, result.requests) * 1e6,
                # Cores the load generator kept busy: near 1.0 would make it the bottleneck.
                "client_cores": client / args.seconds,
            }
    finally:
        _stop(proc)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the four scenarios and print the table (or JSON)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.holds", description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skus", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--pace-ms",
        type=int,
        default=64,
        help="paced runs: ms each of 64 connections waits between requests (~1,000/s offered)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs; figures are their medians")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--hot-counts",
        default="0,100,1000,5000",
        help="hot: active holds on the SKU before each measurement; ratios are to the first",
    )
    parser.add_argument("--hot-connections", type=int, default=16)
    args = parser.parse_args(argv)
    scenarios = tuple(s for s in args.scenarios.split(",") if s)
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    hot_counts = [int(c) for c in args.hot_counts.split(",")]
    results: dict[str, Any] = {"scenarios": {}, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        redis = RedisServer(data_dir=logs / "redis")
        redis.start()
        try:
            took = seed(redis.port, 0, args.skus, naive=False)
            print(f"seeded {args.skus:,} SKUs in {took:.1f} s", file=sys.stderr)
            for run in range(args.repeat):
                figures = {}
                for scenario in scenarios if run % 2 == 0 else scenarios[::-1]:
                    # Each scenario on a copy of the seeded data, so holds never pile up.
                    db = 1
                    assert redis.pid is not None
                    if scenario == "hot":
                        figures["hot"] = {}
                        for count in hot_counts if run % 2 == 0 else hot_counts[::-1]:
                            _copy_db(redis.port, 0, db)
                            _stock_hot(redis.port, db)
                            hot = _measure_hot(
                                redis.url_for(db), redis.port, redis.pid, logs, args, run, count
                            )
                            figures["hot"][str(count)] = hot
                            print(
                                f"run {run + 1} hot with {count:,} holds:"
                                f" {hot['holds_per_second']:.0f} holds/s,"
                                f" Redis {hot['redis_cpu_us_per_hold']:.0f} us/hold",
                                file=sys.stderr,
                            )
                        continue
                    _copy_db(redis.port, 0, db)
                    figures[scenario] = _measure(
                        scenario, redis.url_for(db), redis.pid, logs, args, run
                    )
                    rps = figures[scenario]["64"]["requests_per_second"]
                    print(f"run {run + 1} {scenario}: {rps:.0f} req/s at 64", file=sys.stderr)
                results["runs"].append(figures)
        finally:
            redis.stop()
    # Per scenario and figure, the median over the runs (scenarios alternate their order
    # between runs, so a burst of outside load does not land on one scenario only).
    best = _medians(results["runs"])
    results["scenarios"] = best
    results["summary"] = _summary(best, hot_counts)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    if set(best) - {"hot"}:
        print(
            f"\n{'scenario':12s} {'conns':>5s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}"
            f" {'API CPU us/req':>15s} {'Redis CPU us/req':>17s} {'wrk CPU us/req':>15s}"
        )
    for scenario, by_conns in best.items():
        if scenario == "hot":
            continue
        for conns, f in by_conns.items():
            print(
                f"{scenario:12s} {conns:>5s} {f['requests_per_second']:9.0f}"
                f" {f['p50_ms']:8.2f} {f['p99_ms']:8.2f}"
                f" {f['server_cpu_us_per_request']:15.1f} {f['redis_cpu_us_per_request']:17.1f}"
                f" {f['client_cpu_us_per_request']:15.1f}"
            )
    if "hot" in best:
        print(
            f"\n{'hot: holds':>16s} {'holds/s':>9s} {'p99 ms':>8s} {'API CPU us/hold':>16s}"
            f" {'Redis CPU us/hold':>18s} {'script us/call':>15s}"
        )
        for count, f in best["hot"].items():
            print(
                f"{int(count):16,d} {f['holds_per_second']:9.0f} {f['p99_ms']:8.2f}"
                f" {f['server_cpu_us_per_hold']:16.1f} {f['redis_cpu_us_per_hold']:18.1f}"
                f" {f['redis_script_us_per_call']:15.1f}"
            )
    print()
    for key, value in results["summary"].items():
        target = _TARGETS.get(key)
        verdict = ""
        if target is not None:
            ok = value < target if "_p99_ms_" in key else value >= target
            verdict = f"target {target:g}  {'met' if ok else 'MISSED'}"
        print(f"{key:30s} {value:8.2f}   {verdict}")
    return 0


def _summary(best: dict[str, Any], hot_counts: list[int]) -> dict[str, float]:
    """The ratios the issues set targets for, of the scenarios that ran."""
    out: dict[str, float] = {}

    def rps(scenario: str, conns: str) -> float:
        return float(best[scenario][conns]["requests_per_second"])

    if "hold" in best:
        out["hold_p99_ms_at_64"] = best["hold"]["64"]["p99_ms"]
        out["hold_p99_ms_at_64_paced"] = best["hold"]["64paced"]["p99_ms"]
    if "bare_hold" in best:
        out["bare_hold_p99_ms_at_64_paced"] = best["bare_hold"]["64paced"]["p99_ms"]
    if "hold" in best and "evalsha" in best:
        for conns in ("64", "32"):
            out[f"hold_over_evalsha_at_{conns}"] = rps("hold", conns) / rps("evalsha", conns)
    if "hold" in best and "bare_hold" in best:
        for conns in ("64", "32"):
            out[f"hold_over_bare_hold_at_{conns}"] = rps("hold", conns) / rps("bare_hold", conns)
        out["hold_cpu_over_bare_hold_at_64"] = _cpu_per_request(
            best["hold"]["64"]
        ) / _cpu_per_request(best["bare_hold"]["64"])
    if "get" in best and "get_held" in best:
        for conns in ("64", "32"):
            out[f"get_held_over_get_at_{conns}"] = rps("get_held", conns) / rps("get", conns)
    if "hot" in best:
        base = best["hot"][str(hot_counts[0])]
        for count in hot_counts[1:]:
            f = best["hot"][str(count)]
            for key, short in (
                ("holds_per_second", "holds_per_s"),
                ("redis_cpu_us_per_hold", "redis_cpu"),
                ("redis_script_us_per_call", "script_us"),
                ("server_cpu_us_per_hold", "api_cpu"),
            ):
                out[f"hot_{short}_{count}_over_{hot_counts[0]}"] = f[key] / max(1e-9, base[key])
    return out


def _medians(runs: list[dict[str, dict[str, dict[str, Any]]]]) -> dict[str, Any]:
    """Each figure of each scenario and connection count: its median over ``runs``."""
    first = runs[0]
    return {
        scenario: {
            conns: {
                key: statistics.median(run[scenario][conns][key] for run in runs) for key in figures
            }
            for conns, figures in by_conns.items()
        }
        for scenario, by_conns in first.items()
    }


def _cpu_per_request(figures: dict[str, Any]) -> float:
    """Server and Redis CPU of one request, in microseconds."""
    return float(figures["server_cpu_us_per_request"] + figures["redis_cpu_us_per_request"])


def _copy_db(port: int, source: int, target: int) -> None:
    """Make database ``target`` a copy of ``source`` (FLUSHDB, then COPY every key)."""
    import redis

    with redis.Redis(port=port, db=target) as copy:
        copy.flushdb()
    with redis.Redis(port=port, db=source) as client:
        cursor = 0
        while True:
            cursor, keys = client.scan(cursor, count=5000)
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command("COPY", key, key, "DB", target)
            pipe.execute()
            if cursor == 0:
                break


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve-api":
        _serve_api(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "serve-bare":
        _serve_bare(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(main())
