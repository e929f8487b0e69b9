"""``stocksync api``: serve the availability API on uvloop, in one or several processes.

With ``processes > 1`` the parent forks that many servers that each bind the
same port with ``SO_REUSEPORT`` (the kernel spreads connections over them) and
each load their own copy of the model; the parent only supervises. SIGTERM or
SIGINT stops every server cleanly: in-flight requests finish, then Redis
connections close.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import socket
import sys
import time
from multiprocessing.connection import wait
from types import FrameType
from typing import Final

import uvloop
from aiohttp import web

from stocksync.api.app import create_app
from stocksync.api.dispatch import ApiRunner
from stocksync.config.settings import Settings

__all__ = ["run"]

log = logging.getLogger("stocksync.api")

#: Seconds in-flight requests get to finish at shutdown.
SHUTDOWN_TIMEOUT: Final = 5.0
#: Seconds the supervisor waits for its servers to stop before killing them.
_CHILD_STOP_TIMEOUT: Final = SHUTDOWN_TIMEOUT + 10.0
_BACKLOG: Final = 2048


def run(settings: Settings, processes: int = 1) -> int:
    """Serve the API until SIGTERM or SIGINT; return the process exit status."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, not {processes!r}")
    if processes == 1:
        return _serve(settings, settings.api.port, reuse_port=False)
    return _supervise(settings, processes)


def _serve(settings: Settings, port: int, *, reuse_port: bool) -> int:
    """One server process on uvloop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve_until_stopped(settings, port, reuse_port=reuse_port))


async def _serve_until_stopped(settings: Settings, port: int, *, reuse_port: bool) -> int:
    host = settings.api.host
    try:  # bind first: a taken port fails at once, before any Redis work
        sock = socket.create_server(
            (host, port),
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            backlog=_BACKLOG,
            reuse_port=reuse_port,
        )
    except OSError as exc:
        log.error(
            "cannot listen on %s:%d: %s; pick another api.port or stop what uses it",
            host,
            port,
            exc,
        )
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = ApiRunner(
        create_app(settings),
        access_log=None,  # the app logs its own, as configured
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        log.info("availability API listening on http://%s:%d", host, sock.getsockname()[1])
        await stop.wait()
        log.info("stopping the availability API")
    finally:
        await runner.cleanup()
    return 0


def _child(settings: Settings, port: int) -> None:
    """Entry point of one forked server."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    sys.exit(_serve(settings, port, reuse_port=True))


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: it fixes the port (0 picks one)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _supervise(settings: Settings, processes: int) -> int:
    """Fork ``processes`` servers on one port and wait; stop them all on a signal."""
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
    children = [
        context.Process(target=_child, args=(settings, port), name=f"stocksync-api-{i}")
        for i in range(processes)
    ]
    status = 0
    try:
        for child in children:
            child.start()
        log.info("started %d API processes on port %d", processes, port)
        while not stopping:
            done = wait([c.sentinel for c in children], timeout=0.5)
            if done and not stopping:
                dead = next(c for c in children if c.sentinel in done)
                if dead.exitcode == 0:  # e.g. a signal sent to the whole process group
                    log.info("API process %s stopped; stopping the others", dead.pid)
                else:
                    log.error(
                        "API process %s exited with %s; stopping the others",
                        dead.pid,
                        dead.exitcode,
                    )
                    status = 1
                break
    finally:
        for child in children:
            if child.is_alive() and child.pid is not None:
                child.terminate()
        deadline = time.monotonic() + _CHILD_STOP_TIMEOUT
        for child in children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                log.error("API process %s did not stop in time; killing it", child.pid)
                child.kill()
                child.join()
                status = 1
            elif child.exitcode not in (0, -signal.SIGTERM):
                status = 1
        reserved.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status
