"""What the API benchmark's runner and scenario servers share: data, seeding, wrk, /proc."""

from __future__ import annotations

import os
import random
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from stocksync.codecs.projections import ChannelAvailability, NodeAvailability, SkuProjection
from stocksync.store.layout import SERVED_FIELD, VERSION_FIELD, Keys
from stocksync.store.served import served_from_channels

__all__ = [
    "CHANNELS",
    "LUA_DIR",
    "NAMESPACE",
    "NODES",
    "WrkResult",
    "cpu_seconds",
    "naive_key",
    "plain_document",
    "projections",
    "rss_bytes",
    "run_wrk",
    "seed",
    "sku_name",
    "wait_http",
]

NAMESPACE: Final = "bench"
CHANNELS: Final = ("web", "store")
NODES: Final = ("dc-east", "dc-west")
UPDATED_AT: Final = "2026-11-27T09:01:10.512Z"
LUA_DIR: Final = Path(__file__).with_name("lua")
_encoder = msgspec.json.Encoder()


def sku_name(i: int) -> str:
    """The i-th benchmark SKU, as the wrk scripts spell it."""
    return f"SKU-{i:07d}"


def naive_key(sku: str, channel: str) -> str:
    """The plain string key the naive Redis-per-request service reads."""
    return f"{NAMESPACE}:naive:{{{sku}}}:{channel}"


def projections(count: int, seed_value: int = 7) -> Iterator[SkuProjection]:
    """``count`` realistic projections: two channels, two nodes each, varied quantities."""
    rnd = random.Random(seed_value)
    for i in range(count):
        sku = sku_name(i)
        version = rnd.randrange(1, 5_000_000)
        nodes = []
        for node in NODES:
            on_hand = rnd.randrange(0, 500)
            reserved = rnd.randrange(0, on_hand + 1)
            quarantine = rnd.randrange(0, 3)
            safety = rnd.randrange(0, 5)
            available = max(0, on_hand - reserved - quarantine - safety)
            nodes.append(
                NodeAvailability(
                    node=node,
                    available=available,
                    on_hand=on_hand,
                    reserved=reserved,
                    quarantine=quarantine,
                    safety_stock=safety,
                )
            )
        total = sum(n.available for n in nodes)
        channels = [
            ChannelAvailability(
                sku=sku,
                channel=channel,
                available=max(0, total - b),
                status="out_of_stock"
                if total <= b
                else "low_stock"
                if total - b <= 5
                else "in_stock",
                version=version,
                updated_at=UPDATED_AT,
                nodes=nodes,
            )
            for channel, b in zip(CHANNELS, (0, 2), strict=True)
        ]
        yield SkuProjection(sku=sku, version=version, updated_at=UPDATED_AT, channels=channels)


def plain_document(channel: ChannelAvailability) -> bytes:
    """The JSON of a channel without node detail, as the API answers it."""
    return _encoder.encode(msgspec.structs.replace(channel, nodes=msgspec.UNSET))


def _resp(*parts: bytes) -> bytes:
    """One Redis command in the wire protocol."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def seed(port: int, db: int, count: int, *, naive: bool) -> float:
    """Write ``count`` SKUs as the worker lays them out (and naive keys); seconds taken.

    Mass insertion through ``redis-cli --pipe``: a redis-py pipeline would take
    minutes for a million hashes.
    """
    keys = Keys(NAMESPACE)
    started = time.perf_counter()
    with subprocess.Popen(
        ["redis-cli", "-p", str(port), "-n", str(db), "--pipe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdin is not None
        # The identity marker of the model, as the worker's first start writes it.
        batch: list[bytes] = [_resp(b"SET", keys.model().encode(), b"g-benchmark")]
        for proj in projections(count):
            raw = served_from_channels(proj.sku, proj.version, proj.channels)
            batch.append(
                _resp(
                    b"HSET",
                    keys.sku(proj.sku).encode(),
                    VERSION_FIELD.encode(),
                    str(proj.version).encode(),
                    SERVED_FIELD.encode(),
                    raw,
                )
            )
            if naive:
                for channel in proj.channels:
                    batch.append(
                        _resp(
                            b"SET",
                            naive_key(proj.sku, channel.channel).encode(),
                            plain_document(channel),
                        )
                    )
            if len(batch) >= 10_000:
                proc.stdin.write(b"".join(batch))
                batch.clear()
        proc.stdin.write(b"".join(batch))
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError("redis-cli --pipe failed while seeding")
    return time.perf_counter() - started


def wait_http(url: str, timeout: float, proc: subprocess.Popen[Any] | None = None) -> float:
    """Poll ``url`` until it answers 200; seconds waited. Fails if ``proc`` exits first."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.perf_counter() - started
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} was not ready within {timeout} s")


def rss_bytes(pid: int) -> tuple[int, int]:
    """Resident set size of ``pid`` now and at its peak (VmRSS, VmHWM), in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    requests_per_second: float
    requests: int
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    #: What the script's done() printed as ``name: count`` lines.
    counters: tuple[tuple[str, int], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The measured figures as plain data (without the script's counters)."""
        figures = asdict(self)
        del figures["counters"]
        return figures

    def counter(self, name: str) -> int:
        """A count the script's done() printed as ``name: count``."""
        found = dict(self.counters)
        if name not in found:
            raise RuntimeError(f"the wrk script printed no {name!r} count")
        return found[name]


_UNITS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency_ms(text: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {percentile}% latency in wrk's output:\n{text}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    url: str,
    *,
    script: Path,
    seconds: float,
    connections: int,
    threads: int,
    cpu: int,
    env: dict[str, str],
    timeout_s: float = 2.0,
) -> WrkResult:
    """Run wrk pinned to ``cpu`` and parse its report (``timeout_s``: wrk's per request)."""
    command = [
        "taskset",
        "-c",
        str(cpu),
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        f"--timeout={timeout_s:g}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    text = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    if rps is None or total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{text}\n{done.stderr}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return WrkResult(
        requests_per_second=float(rps.group(1)),
        requests=int(total.group(1)),
        p50_ms=_latency_ms(text, "50"),
        p99_ms=_latency_ms(text, "99"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        counters=tuple(
            (m.group(1), int(m.group(2)))
            for m in re.finditer(r"^([a-z_]+): (\d+)$", text, re.MULTILINE)
        ),
    )
