"""Adjustments to redis-py's private parts.

- :func:`detach_streams`: take the asyncio streams of a connected
  ``redis.asyncio.Connection`` away from it, so its socket (set up by redis-py:
  TCP or TLS, ``AUTH``, ``SELECT``, ``HELLO``) can carry pipelined commands that
  :mod:`stocksync.store.multiplex` reads itself (``_reader``, ``_writer``).
- :func:`closed_transport_is_a_connection_error`: a command written to a
  connection that another task closed meanwhile raises ``ConnectionError``, not
  uvloop's ``RuntimeError("unable to perform operation on <TCPTransport
  closed=True ...>; the handler is closed")``. The cluster client closes every
  connection of every node, in use or not, when a node answers CLUSTERDOWN (as
  all of them do while a failover is under way), so commands in flight on other
  tasks meet closed transports; as a ``ConnectionError`` the cluster client
  re-reads the slot map and retries them, and the store reports the rest as
  unavailable, where a ``RuntimeError`` would escape every handler and stop the
  worker. The same for the ``AttributeError`` of a write to a connection whose
  writer was dropped between its connect and the write. It wraps the public
  ``Connection.send_packed_command``.

- :func:`learn_moved`: tell a cluster client's slot map what a MOVED answer to a
  command sent outside it (:mod:`stocksync.store.routed`) said, as its own command
  path does (``NodesManager.move_slot``), so the call's retry goes to the new owner.

Written for redis-py 8.x; on another version these stand down and say so: the
script calls of checkout holds then take one pooled connection per call,
through redis-py's own command path (correct, but a hold costs more CPU), and a
failover may stop a worker (which its supervisor restarts).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from stocksync.compat import supported

__all__ = [
    "ACTIVE",
    "check",
    "closed_transport_is_a_connection_error",
    "detach_streams",
    "learn_moved",
    "transport_closed",
]

DISTRIBUTION = "redis"
LOWEST = "8.0.0"
BELOW = "9"


def check() -> bool:
    """Tell whether the installed redis-py is one these adjustments were written for."""
    return supported(
        DISTRIBUTION,
        LOWEST,
        BELOW,
        what="checkout holds take a pooled connection per script call, and a command on a "
        "connection closed under it by a cluster failover raises RuntimeError instead of "
        "ConnectionError",
    )


#: Whether the adjustments are in force (decided once, at import).
ACTIVE = check()


def detach_streams(connection: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """The connected ``connection``'s streams, which it then no longer owns (None: off).

    redis-py then sees the connection as closed (it will neither read nor close
    the socket); the caller keeps the writer referenced while it uses the
    transport (a collected ``StreamWriter`` closes it) and closes it when done.
    """
    if not ACTIVE:
        return None
    reader, writer = connection._reader, connection._writer
    if not isinstance(reader, asyncio.StreamReader) or not isinstance(
        writer, asyncio.StreamWriter
    ):
        return None
    connection._reader = connection._writer = None
    return reader, writer


def transport_closed(exc: BaseException) -> bool:
    """Whether ``exc`` is uvloop's (or asyncio's) refusal to write to a closed transport."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "handler is closed" in text or ("unable to perform operation" in text and "closed" in text)
    )


def closed_transport_is_a_connection_error() -> None:
    """Make a write to a closed transport raise redis-py's ConnectionError (idempotent)."""
    if not ACTIVE or getattr(Connection.send_packed_command, "_stocksync", False):
        return
    original = Connection.send_packed_command

    @functools.wraps(original)
    async def send_packed_command(self: Connection, *args: Any, **kwargs: Any) -> None:
        try:
            await original(self, *args, **kwargs)
        except (RuntimeError, AttributeError) as exc:
            # AttributeError: the connection was disconnected (its writer is None) between
            # its connect and this write, the same close seen a moment later.
            if not (transport_closed(exc) or (
                isinstance(exc, AttributeError) and not self.is_connected
            )):
                raise
            await self.disconnect(nowait=True)
            raise RedisConnectionError(
                f"the connection to {self.host}:{self.port} was closed under a write"
            ) from exc

    send_packed_command._stocksync = True  # type: ignore[attr-defined]
    Connection.send_packed_command = send_packed_command  # type: ignore[method-assign,assignment]


async def learn_moved(client: Any, moved: Any) -> None:
    """Point the slot of a MOVED answer (``MovedError``) at the node it names (off: nothing;
    the cluster client then meets the MOVED itself and learns it there)."""
    if ACTIVE:
        await client.nodes_manager.move_slot(moved)
