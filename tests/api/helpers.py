"""Helpers of the API tests: projections written to Redis as the worker writes them, a client."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
import redis
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from stocksync.api.app import create_app
from stocksync.api.dispatch import ApiRunner
from stocksync.codecs.projections import (
    ChannelAvailability,
    NodeAvailability,
    Served,
    SkuProjection,
)
from stocksync.config.settings import ApiSettings, ChannelSettings, Settings, TokenSettings
from stocksync.store.layout import (
    CLUSTER_SHARDS,
    POSITION_FIELD,
    SERVED_FIELD,
    VERSION_FIELD,
    Keys,
    change_fields,
)
from stocksync.store.served import decode_served, served_from_channels

__all__ = [
    "NAMESPACE",
    "ApiProcess",
    "Client",
    "TcpProxy",
    "eventually",
    "is_ready",
    "make_settings",
    "metric_value",
    "projection",
    "run",
    "served",
    "serving",
    "version_of",
    "write",
]

NAMESPACE = "apitest"
UPDATED_AT = "2026-11-27T09:01:10.512Z"
_T = TypeVar("_T")
#: A test client of an API (:func:`serving`).
Client = TestClient[Any, Any]
_encoder = msgspec.json.Encoder()
#: The generation (identity marker) :func:`write` gives a namespace it writes first.
GENERATION = "g-test"


def run(coro: Awaitable[_T]) -> _T:
    """Run one test coroutine on a fresh event loop."""

    async def main() -> _T:
        watchdog = asyncio.get_running_loop().call_later(HANG_REPORT_S, _report_tasks)
        try:
            return await coro
        finally:
            watchdog.cancel()

    return asyncio.run(main())


#: After this long, :func:`run` prints every task's stack to stderr (before pytest's
#: timeout kills the test with only the selector's frame to show).
HANG_REPORT_S = 45.0


def _report_tasks() -> None:
    print(f"--- the test is still running after {HANG_REPORT_S:.0f}s; its tasks:", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(limit=12, file=sys.stderr)


def make_settings(
    redis_url: str,
    *,
    channels: Sequence[str] = ("web", "store"),
    tokens: Sequence[TokenSettings] = (),
    redis_cluster: bool = False,
    **api: Any,
) -> Settings:
    """Settings for an API on ``redis_url`` (a node of a Redis Cluster with
    ``redis_cluster``) with these channels (nodes dc-east, dc-west)."""
    return Settings(
        redis_url=redis_url,
        redis_cluster=redis_cluster,
        redis_namespace=NAMESPACE,
        channels=[
            ChannelSettings(name=name, nodes=["dc-east", "dc-west"], low_stock_threshold=5)
            for name in channels
        ],
        api=ApiSettings(tokens=list(tokens), **api),
    )


def projection(
    sku: str,
    version: int = 1,
    *,
    available: int = 10,
    channels: Sequence[str] = ("web", "store"),
) -> SkuProjection:
    """A projection of ``sku`` whose channels all have ``available`` (+ channel index)."""
    docs = []
    for i, name in enumerate(channels):
        qty = available + i
        docs.append(
            ChannelAvailability(
                sku=sku,
                channel=name,
                available=qty,
                status="out_of_stock" if qty == 0 else "low_stock" if qty <= 5 else "in_stock",
                version=version,
                updated_at=UPDATED_AT,
                held=0,
                nodes=[
                    NodeAvailability(
                        node="dc-east",
                        available=qty,
                        on_hand=qty + 2,
                        reserved=2,
                        quarantine=0,
                        safety_stock=0,
                    ),
                    NodeAvailability(
                        node="dc-west",
                        available=0,
                        on_hand=1,
                        reserved=0,
                        quarantine=1,
                        safety_stock=0,
                    ),
                ],
            )
        )
    return SkuProjection(sku=sku, version=version, updated_at=UPDATED_AT, channels=docs)


def served(proj: SkuProjection) -> Served:
    """The served form the worker would store for ``proj``."""
    return decode_served(served_from_channels(proj.sku, proj.version, proj.channels))


def write(
    client: redis.Redis | redis.RedisCluster,
    *projections: SkuProjection,
    maxlen: int | None = None,
    stream: bool = True,
    namespace: str = NAMESPACE,
    generation: str = GENERATION,
) -> None:
    """HSET each served form and XADD its change in one MULTI/EXEC, as the worker does.

    The namespace gets its identity marker ``generation`` unless it has one. On a
    Redis Cluster: each SKU and its change in its shard (one command at a time).
    """
    if isinstance(client, redis.RedisCluster):
        _write_sharded(client, projections, maxlen, stream, namespace, generation)
        return
    keys = Keys(namespace)
    pipe = client.pipeline(transaction=True)
    pipe.set(keys.model(), generation, nx=True)
    for proj in projections:
        raw = served_from_channels(proj.sku, proj.version, proj.channels)
        pipe.hset(
            keys.sku(proj.sku),
            mapping={VERSION_FIELD: str(proj.version), POSITION_FIELD: b"", SERVED_FIELD: raw},
        )
        if stream:
            pipe.xadd(
                keys.changes(),
                change_fields(proj.sku, proj.version, raw),  # type: ignore[arg-type]
                maxlen=maxlen,
                approximate=False,
            )
    pipe.execute()


def _write_sharded(
    client: redis.RedisCluster,
    projections: Sequence[SkuProjection],
    maxlen: int | None,
    stream: bool,
    namespace: str,
    generation: str,
) -> None:
    keys = Keys(namespace, shards=CLUSTER_SHARDS)
    for shard in range(CLUSTER_SHARDS):
        client.set(keys.model(shard), generation, nx=True)
    for proj in projections:
        raw = served_from_channels(proj.sku, proj.version, proj.channels)
        client.hset(
            keys.sku(proj.sku),
            mapping={VERSION_FIELD: str(proj.version), POSITION_FIELD: b"", SERVED_FIELD: raw},
        )
        if stream:
            client.xadd(
                keys.changes(keys.shard_of(proj.sku)),
                change_fields(proj.sku, proj.version, raw),  # type: ignore[arg-type]
                maxlen=maxlen,
                approximate=False,
            )


class ApiTestServer(TestServer):
    """A test server that runs the app as ``stocksync api`` does: hot routes first."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        # As `stocksync api` runs it: a client hanging up does not cancel its handler.
        kwargs["handler_cancellation"] = False
        return ApiRunner(self.app, **kwargs)


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, *, ready: bool = True, hot_routes: bool = True
) -> AsyncIterator[Client]:
    """A test client of a started API; waits until ``/readyz`` is 200 unless told not to.

    ``hot_routes=False`` serves it with aiohttp's plain runner: every request
    through the router. With ``ready``, a namespace without a model gets an empty
    one (its identity marker), as a worker's first start leaves it.
    """
    if ready:
        client: aioredis.Redis | aioredis.RedisCluster = (
            aioredis.RedisCluster.from_url(settings.redis_url) if settings.redis_cluster
            else aioredis.Redis.from_url(settings.redis_url)
        )
        try:
            keys = Keys(
                settings.redis_namespace,
                shards=CLUSTER_SHARDS if settings.redis_cluster else 1,
            )
            if await client.get(keys.generation()) is None:
                for shard in range(keys.shards):
                    await client.set(keys.model(shard), GENERATION, nx=True)
        finally:
            await client.aclose()
    app = create_app(settings)
    server = ApiTestServer(app) if hot_routes else TestServer(app)
    async with TestClient(server) as client:
        if ready:
            await eventually(lambda: is_ready(client), timeout=10)
        yield client


async def is_ready(client: Client) -> bool:
    """Whether the API's ``/readyz`` answers 200."""
    async with client.get("/readyz") as resp:
        return resp.status == 200


async def version_of(client: Client, sku: str) -> int | None:
    """The version the API answers for ``sku`` on channel web; None unless 200."""
    async with client.get(f"/v1/availability/{sku}?channel=web") as resp:
        if resp.status != 200:
            return None
        version: int = msgspec.json.decode(await resp.read())["version"]
        return version


async def metric_value(client: Client, name: str) -> float:
    """The value of the unlabelled sample ``name`` on the API's ``/metrics``; fails without it."""
    async with client.get("/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 5.0, interval: float = 0.02
) -> None:
    """Wait until ``check()`` is true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


class TcpProxy:
    """A loopback TCP proxy whose traffic a test can hold (a network partition) and release."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._flowing.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def hold(self) -> None:
        """Stop forwarding bytes (both ways) until :meth:`release`."""
        self._flowing.clear()

    def release(self) -> None:
        """Forward again, including what was held."""
        self._flowing.set()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sink.close()


_SERVE = """
import logging, sys
import msgspec
from stocksync.api.server import run
from stocksync.config.settings import Settings
logging.basicConfig(level=logging.INFO, format="%(process)d %(levelname)s %(name)s %(message)s")
sys.exit(run(msgspec.json.decode(sys.argv[1], type=Settings), processes=int(sys.argv[2])))
"""


class ApiProcess:
    """``stocksync.api.server.run`` in a child process, as ``stocksync api`` runs it."""

    def __init__(self, settings: Settings, processes: int = 1) -> None:
        self.settings = settings
        self.url = f"http://{settings.api.host}:{settings.api.port}"
        # A file, not a pipe: a pipe nobody reads could fill up and stall the child.
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115  # closed in __exit__
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVE, _encoder.encode(settings).decode(), str(processes)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until ``/readyz`` answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the API exited early:\n{self.output()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(self.url + "/readyz", timeout=1) as resp,
            ):
                if resp.status == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"the API was not ready within {timeout} s:\n{self.output()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def output(self) -> str:
        """Everything the process has printed so far."""
        self._log.seek(0)
        return self._log.read()

    def __enter__(self) -> ApiProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.stop()
        self._log.close()
