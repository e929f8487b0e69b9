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

from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from stocksync.api.errors import BadRequest, Overloaded, RequestTimeout, TooManySkus

__all__ = ["ALLOWANCE", "BodyBudget", "BodyTimeout", "ClientGone", "read_body"]

#: Bytes of each body that are not charged to the budget (a batch of 1,000 SKUs fits).
ALLOWANCE: Final = 65_536


class ClientGone(Exception):
    """The client closed the connection before its request was read."""


class BodyTimeout(TimeoutError):
    """The body did not arrive in time (set on the request's payload by the protocol)."""


class BodyBudget:
    """Bytes of request bodies beyond their allowance that one process may hold at once."""

    __slots__ = ("held", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0

    def take(self, size: int) -> bool:
        """Charge ``size`` bytes if they fit; tell whether they did."""
        if self.held + size > self.total:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        """Return ``size`` bytes charged before."""
        self.held -= size


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
            except BodyTimeout as exc:
                raise RequestTimeout(
                    f"The body did not arrive in time: {exc}", close=True
                ) from None
            except (ConnectionError, RequestPayloadError, HttpProcessingError) as exc:
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
    finally:
        budget.give(charged)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
