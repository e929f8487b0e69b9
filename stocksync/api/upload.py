"""Request bodies read into memory: within the request's limit, the process's budget, in time.

A body is read chunk by chunk. Its first :data:`ALLOWANCE` bytes are free;
beyond that each byte is charged to the process's :class:`BodyBudget`
(``api.max_buffered_body_bytes``), and a body that would go over it is refused
``503 overloaded`` at once, so a hundred slow uploads cannot fill memory. The
connection's body deadline (``api.body_timeout_s``, kept by
:class:`~stocksync.api.protocol.ApiProtocol`) ends a read with
``408 request_timeout``. A client that hangs up halfway is :class:`ClientGone`:
there is nobody left to answer, so it is not an error of ours.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from stocksync.api.errors import BadRequest, Overloaded, RequestTimeout, TooManySkus
from stocksync.errors import StocksyncError

__all__ = [
    "ALLOWANCE",
    "BodyBudget",
    "BodyTimeout",
    "ClientGone",
    "give_back_memory",
    "read_body",
]

log = logging.getLogger("stocksync.api")

#: Bytes of each body that are not charged to the budget (a batch of 1,000 SKUs fits).
ALLOWANCE: Final = 65_536
#: Once uploads held this much at once, memory is given back to the system after them.
_TRIM_AFTER: Final = 8 * 2**20
#: Seconds between two looks at whether to give memory back.
_TRIM_EVERY: Final = 2.0
#: Looks in a row that trim after large uploads.
_TRIMS: Final = 3


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``: free heap pages go back to the system (None elsewhere)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


_trim: Final = _malloc_trim()


class ClientGone(StocksyncError):
    """The client closed the connection before its request was read."""


class BodyTimeout(StocksyncError, TimeoutError):
    """The body did not arrive in time (set on the request's payload by the protocol)."""


class BodyBudget:
    """Bytes of request bodies beyond their allowance that one process may hold at once."""

    __slots__ = ("held", "peak", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        #: The most held at once since :func:`give_back_memory` last looked.
        self.peak = 0

    def take(self, size: int) -> bool:
        """Charge ``size`` bytes if they fit; tell whether they did."""
        if self.held + size > self.total:
            return False
        self.held += size
        if self.held > self.peak:
            self.peak = self.held
        return True

    def give(self, size: int) -> None:
        """Return ``size`` bytes charged before."""
        self.held -= size


async def give_back_memory(budget: BodyBudget, every: float = _TRIM_EVERY) -> None:
    """Every ``every`` seconds: once large uploads have all ended, free heap pages go back.

    The allocator keeps what large uploads freed in its heap: a hundred of them
    leave tens of MB behind, more with every round. Handing the free pages
    back (glibc's ``malloc_trim``) brings the process back to its idle size.
    """
    if _trim is None:
        return
    owed = 0  # looks left at which to trim: what connections free after the uploads counts too
    while True:
        await asyncio.sleep(every)
        if budget.peak >= _TRIM_AFTER:
            owed = _TRIMS
        if owed and budget.held == 0:
            log.debug("giving memory back after large uploads (%d bytes held at most)", budget.peak)
            budget.peak = 0
            owed -= 1
            _trim()


async def read_body(request: web.Request, *, limit: int, budget: BodyBudget) -> bytes:
    """The whole body of ``request``, at most ``limit`` bytes."""
    content = request.content
    chunks: list[bytes] = []
    size = 0
    charged = 0
    try:
        while True:
            try:
                chunk = await content.readany()
            except (BodyTimeout, ConnectionError, RequestPayloadError, HttpProcessingError) as exc:
                # The payload keeps this exception, and its traceback would keep this frame
                # (and the chunks) in a cycle with the payload until a full collection.
                exc.__traceback__ = None
                if isinstance(exc, BodyTimeout):
                    raise RequestTimeout(
                        f"The body did not arrive in time: {exc}", close=True
                    ) from None
                transport = request.transport
                if transport is None or transport.is_closing():
                    raise ClientGone(str(exc)) from None
                raise BadRequest(
                    "The body is not valid: it ended early or is malformed.", close=True
                ) from None
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise TooManySkus(
                    f"The body is over {limit} bytes, the most accepted."
                    " Ask for fewer SKUs per request.",
                    close=True,
                )
            over = size - ALLOWANCE - charged
            if over > 0:
                if not budget.take(over):
                    raise Overloaded(
                        "The server holds as many uploads as it may; retry shortly.",
                        {"Retry-After": "1"},
                        close=True,
                    )
                charged += over
            chunks.append(chunk)
    except BaseException:
        chunks.clear()  # now, not when the error and its traceback go
        raise
    finally:
        budget.give(charged)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
