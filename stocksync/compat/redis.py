"""Adjustments to redis-py's private parts.

- :func:`detach_streams`: take the asyncio streams of a connected
  ``redis.asyncio.Connection`` away from it, so its socket (set up by redis-py:
  TCP or TLS, ``AUTH``, ``SELECT``, ``HELLO``) can carry pipelined commands that
  :mod:`stocksync.store.multiplex` reads itself (``_reader``, ``_writer``).

Written for redis-py 8.x; on another version this stands down and says so: the
script calls of checkout holds then take one pooled connection per call,
through redis-py's own command path (correct, but a hold costs more CPU).
"""

from __future__ import annotations

import asyncio
from typing import Any

from stocksync.compat import supported

__all__ = ["ACTIVE", "check", "detach_streams"]

DISTRIBUTION = "redis"
LOWEST = "8.0.0"
BELOW = "9"


def check() -> bool:
    """Tell whether the installed redis-py is one this adjustment was written for."""
    return supported(
        DISTRIBUTION,
        LOWEST,
        BELOW,
        what="checkout holds take a pooled connection per script call",
    )


#: Whether the adjustment is in force (decided once, at import).
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
