"""``stocksync api``: serve the availability API on uvloop, in one or several processes.

With ``processes > 1`` the parent forks that many servers that each bind the
same port with ``SO_REUSEPORT`` (the kernel spreads connections over them) and
each load their own copy of the model; the parent only supervises. A server
that dies (a crash, SIGKILL, the OOM killer) is started again after a backoff
(:data:`BACKOFF_MIN` doubling to :data:`BACKOFF_MAX` while it keeps dying
young), logged, and counted in ``stocksync_api_process_restarts_total``, which
every server reports from the :class:`~stocksync.api.hoststate.HostState` the
processes share (with their rate buckets). The port answers throughout from the
others. SIGTERM or SIGINT stops every server cleanly within
``api.shutdown_timeout_s``: in-flight requests finish, then Redis connections
close; a server still running then is killed.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.context import ForkProcess
from types import FrameType
from typing import Final

import uvloop
from aiohttp import web

from stocksync.api.app import MODEL, create_app
from stocksync.api.dispatch import ApiRunner
from stocksync.api.hoststate import HostState
from stocksync.config.settings import Settings
from stocksync.daemon.collector import collect_less

__all__ = ["BACKOFF_MAX", "BACKOFF_MIN", "run"]

log = logging.getLogger("stocksync.api")

#: Seconds before a dead server is started again the first time, and at most.
BACKOFF_MIN: Final = 0.5
BACKOFF_MAX: Final = 30.0
#: A server that ran this long before dying is restarted after BACKOFF_MIN again.
_BACKOFF_RESET: Final = 60.0
#: Seconds of the shutdown timeout a server keeps for closing Redis after its requests.
_CLEANUP_MARGIN: Final = 1.0
#: Most seconds a restarted server waits for its model before it listens anyway.
_LOAD_WAIT_MAX: Final = 60.0
_BACKLOG: Final = 2048


def run(settings: Settings, processes: int = 1) -> int:
    """Serve the API until SIGTERM or SIGINT; return the process exit status."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, not {processes!r}")
    if processes == 1:
        return _serve(settings, settings.api.port, reuse_port=False, host=None)
    return _supervise(settings, processes)


def _serve(
    settings: Settings,
    port: int,
    *,
    reuse_port: bool,
    host: HostState | None,
    listen_when_loaded: bool = False,
) -> int:
    """One server process on uvloop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(
            _serve_until_stopped(
                settings,
                port,
                reuse_port=reuse_port,
                host=host,
                listen_when_loaded=listen_when_loaded,
            )
        )


def _bind(address: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound socket, not yet listening (the site listens when it starts)."""
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


async def _serve_until_stopped(
    settings: Settings,
    port: int,
    *,
    reuse_port: bool,
    host: HostState | None,
    listen_when_loaded: bool,
) -> int:
    """Serve until a signal; with ``listen_when_loaded``, take connections only once loaded.

    A server the supervisor restarts waits for its model before it listens, so
    the kernel does not hand it connections it could only answer ``503`` while
    the other servers can answer them (it listens anyway after
    :data:`_LOAD_WAIT_MAX` seconds, so a Redis outage does not keep it dark).
    """
    address = settings.api.host
    try:  # bind first: a taken port fails at once, before any Redis work
        sock = _bind(address, port, reuse_port=reuse_port)
    except OSError as exc:
        log.error(
            "cannot listen on %s:%d: %s; pick another api.port or stop what uses it",
            address,
            port,
            exc,
        )
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(settings, host)
    runner = ApiRunner(
        app,
        access_log=None,  # the app logs its own, as configured
        handle_signals=False,
        shutdown_timeout=max(0.1, settings.api.shutdown_timeout_s - _CLEANUP_MARGIN),
    )
    await runner.setup()
    collect_less()
    try:
        if listen_when_loaded:
            deadline = loop.time() + _LOAD_WAIT_MAX
            while not app[MODEL].loaded and not stop.is_set() and loop.time() < deadline:
                await asyncio.sleep(0.05)
        if not stop.is_set():
            await web.SockSite(runner, sock, backlog=_BACKLOG).start()
            log.info("availability API listening on http://%s:%d", address, sock.getsockname()[1])
            await stop.wait()
        log.info("stopping the availability API")
    finally:
        await runner.cleanup()
        sock.close()
    return 0


def _child(settings: Settings, port: int, host: HostState, restarted: bool) -> None:
    """Entry point of one forked server."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    sys.exit(_serve(settings, port, reuse_port=True, host=host, listen_when_loaded=restarted))


def _reserve_port(address: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: it fixes the port (0 picks one)."""
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address, port))
    return sock


@dataclass(slots=True)
class _Slot:
    """One of the N servers: its current process, and when it is due to start again."""

    index: int
    process: ForkProcess | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None


def _supervise(settings: Settings, processes: int) -> int:
    """Fork ``processes`` servers on one port, restart any that dies; stop them on a signal."""
    try:
        reserved = _reserve_port(settings.api.host, settings.api.port)
    except OSError as exc:
        log.error(
            "cannot bind %s:%d: %s; pick another api.port or stop what uses it",
            settings.api.host,
            settings.api.port,
            exc,
        )
        return 1
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    context = multiprocessing.get_context("fork")  # children inherit the logging setup
    port = reserved.getsockname()[1]
    host = HostState(len(settings.api.tokens), shared=True)
    slots = [_Slot(i) for i in range(processes)]

    def start(slot: _Slot, *, restarted: bool = False) -> None:
        process = context.Process(
            target=_child,
            args=(settings, port, host, restarted),
            name=f"stocksync-api-{slot.index}",
        )
        process.start()
        slot.process, slot.started_at, slot.restart_at = process, time.monotonic(), None

    status = 0
    try:
        for slot in slots:
            start(slot)
        log.info("started %d API processes on port %d", processes, port)
        while not stopping:
            now = time.monotonic()
            for slot in slots:
                if slot.restart_at is not None and slot.restart_at <= now and not stopping:
                    start(slot, restarted=True)
                    host.count_restart()
                    assert slot.process is not None
                    log.info(
                        "restarted API process %d as pid %s (%d restarts so far)",
                        slot.index,
                        slot.process.pid,
                        host.restarts,
                    )
            due = [s.restart_at for s in slots if s.restart_at is not None]
            timeout = 0.5 if not due else max(0.0, min(0.5, min(due) - time.monotonic()))
            alive = {s.process.sentinel: s for s in slots if s.process is not None}
            for sentinel in wait(list(alive), timeout=timeout):
                if stopping:
                    break
                _schedule_restart(alive[sentinel])  # type: ignore[index]
    finally:
        status = _stop_all(slots, settings.api.shutdown_timeout_s)
        reserved.close()
        host.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status


def _schedule_restart(slot: _Slot) -> None:
    """Note that ``slot``'s process died and when to start it again."""
    process = slot.process
    assert process is not None
    process.join()
    lived = time.monotonic() - slot.started_at
    slot.failures = 0 if lived >= _BACKOFF_RESET else slot.failures + 1
    delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** max(0, slot.failures - 1))
    code = process.exitcode
    how = f"was killed by {signal.Signals(-code).name}" if code and code < 0 else f"exited {code}"
    log.error(
        "API process %d (pid %s) %s after %.1f s; starting it again in %.1f s",
        slot.index,
        process.pid,
        how,
        lived,
        delay,
    )
    slot.process = None
    slot.restart_at = time.monotonic() + delay


def _stop_all(slots: list[_Slot], timeout: float) -> int:
    """SIGTERM every server, wait up to ``timeout`` in all, kill the rest; the exit status."""
    status = 0
    running = [s.process for s in slots if s.process is not None]
    for process in running:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in running:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("API process %s did not stop within %.1f s; killing it", process.pid, timeout)
            process.kill()
            process.join()
            status = 1
        elif process.exitcode not in (0, -signal.SIGTERM):
            status = 1
    return status
