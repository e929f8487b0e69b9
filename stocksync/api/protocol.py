"""The API's HTTP connections: bounded in time and number, and answering in JSON whatever comes.

aiohttp's connection handler (``RequestHandler``) keeps a connection for as
long as the client likes while it sends its headers or body, has no cap on
connections, answers requests it cannot parse itself (``text/plain``, with an
ERROR log entry and the parser's traceback for each), and drops every request
of a read that also holds a malformed one. :class:`ApiProtocol` changes that:

- **header deadline** (``api.header_timeout_s``): from the connection's start,
  and from the first byte of each later request, to its last header; past it
  the client gets ``408 request_timeout`` and the connection closes;
- **body deadline** (``api.body_timeout_s``): from the headers to the last
  byte of the body; past it a handler reading the body answers 408
  (:mod:`stocksync.api.upload`), and the connection closes;
- **idle keep-alive** (``api.idle_timeout_s``): aiohttp's keep-alive timer;
- **connection cap** (``api.max_connections`` per process): one more is
  answered ``503 overloaded`` with ``Retry-After`` and closed;
- **refused uploads** (an answer that closes the connection before the body was
  read: ``503 overloaded`` over the upload budget, ``413``, ``401`` ...): the
  answer is followed at once by the end of what the server sends (a half
  close), the rest of the body is read and dropped for at most
  :data:`UNREAD_BODY_LINGER` seconds (aiohttp's ``lingering_time``, 10 s by
  default), so the client's bytes in flight do not reset the connection before
  it has read the answer, and then the connection closes;
- requests it cannot parse get ``bad_request`` (their status stays aiohttp's)
  and one INFO line; a server error keeps aiohttp's log with its traceback and
  is answered ``internal`` without detail;
- several requests in one read are parsed one by one, so a valid request
  before a malformed one gets its answer, then the error closes the connection.

It relies on ``RequestHandler`` internals (``_messages``, ``_request_count``,
``_request_in_progress``, ``_payload_parser``, ``_ErrInfo``), checked at import
against :data:`TESTED_AIOHTTP`; a canary test fails when aiohttp changes them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, cast

import aiohttp
from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from stocksync.api.errors import (
    INTERNAL_MESSAGE,
    ApiError,
    BadRequest,
    InternalError,
    Overloaded,
    RequestTimeout,
    error_body,
    error_response,
)
from stocksync.api.metrics import ConnectionStats
from stocksync.api.upload import BodyTimeout

__all__ = [
    "CONNECTION_LIMITS",
    "TESTED_AIOHTTP",
    "UNREAD_BODY_LINGER",
    "ApiProtocol",
    "ApiServer",
    "ConnectionLimits",
    "reason_of",
]

log = logging.getLogger("stocksync.api")

#: The aiohttp release line whose ``RequestHandler`` internals this module uses.
TESTED_AIOHTTP: Final = (3, 14)
#: ``RequestHandler`` slots read or written here.
_INTERNALS: Final = (
    "_messages",
    "_request_count",
    "_request_in_progress",
    "_payload_parser",
    "_upgraded",
    "_close",
    "_force_close",
)
_HEADER_END: Final = b"\r\n\r\n"
#: aiohttp's own parsing of a read, called directly (cheaper than super() per request).
_feed: Final = RequestHandler.data_received


def _check_aiohttp() -> None:
    version = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])
    slots = {name for cls in RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    missing = [name for name in _INTERNALS if name not in slots]
    if missing:
        raise ImportError(
            f"aiohttp {aiohttp.__version__} lacks RequestHandler.{', '.join(missing)}, which"
            f" stocksync.api.protocol needs; install aiohttp {TESTED_AIOHTTP[0]}."
            f"{TESTED_AIOHTTP[1]}"
        )
    if version != TESTED_AIOHTTP:
        log.warning(
            "aiohttp %s is not the tested %d.%d: check stocksync.api.protocol against it",
            aiohttp.__version__,
            *TESTED_AIOHTTP,
        )


_check_aiohttp()


def reason_of(exc: BaseException | None, message: str | None) -> str:
    """The first line of the parser's complaint, e.g. ``Invalid method encountered``."""
    lines = str(getattr(exc, "message", None) or message or "").strip().splitlines()
    return (lines[0].rstrip(":").strip() if lines else "") or "malformed request"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long a client may take, and how many may be connected to one process."""

    header_timeout: float = 10.0
    body_timeout: float = 10.0
    idle_timeout: float = 75.0
    max_connections: int = 1000


CONNECTION_LIMITS: Final = web.AppKey("connection_limits", ConnectionLimits)


def _raw_error(error: ApiError) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 error response, for writing without a request."""
    body = error_body(error)
    head = [
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in error.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_REFUSED: Final = _raw_error(
    Overloaded(
        "The server has as many connections as it serves; retry shortly.", {"Retry-After": "1"}
    )
)
_HEADERS_LATE: Final = _raw_error(RequestTimeout("The request's headers did not arrive in time."))
#: Seconds a refused connection stays open for its answer to be read before it closes.
_REFUSED_LINGER: Final = 1.0
#: Seconds the rest of a body not read (its request refused) is dropped before closing.
UNREAD_BODY_LINGER: Final = 1.0


class ApiServer(Server):
    """aiohttp's low-level server with :class:`ApiProtocol` connections, counted."""

    limits: ConnectionLimits
    stats: ConnectionStats

    def __call__(self) -> RequestHandler:
        return ApiProtocol(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        """Count the connection."""
        super().connection_made(handler, transport)
        self.stats.open += 1

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        """Count the connection out."""
        super().connection_lost(handler, exc)
        self.stats.open -= 1

    def adopt(self, limits: ConnectionLimits, stats: ConnectionStats) -> None:
        """Become an :class:`ApiServer` (from the ``Server`` the runner made) with ``limits``."""
        self.limits = limits
        self.stats = stats
        stats.open = len(self.connections)


class ApiProtocol(RequestHandler):
    """aiohttp's connection handler with deadlines, a cap, and JSON for whatever it is sent."""

    __slots__ = ("_body", "_body_timer", "_header_timer", "_limits", "_stats")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the header deadline, or refuse the connection when the process is full."""
        self._body: Any = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        manager = cast(ApiServer, self._manager)
        limits = self._limits = manager.limits
        stats = self._stats = manager.stats
        super().connection_made(transport)
        if stats.open > limits.max_connections:
            self._refuse(cast(asyncio.Transport, transport))
            return
        self._header_timer = self._loop.call_later(limits.header_timeout, self._headers_late)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Stop the deadlines."""
        self._stop_timers()
        self._body = None
        super().connection_lost(exc)

    def _refuse(self, transport: asyncio.Transport) -> None:
        stats = self._stats
        stats.refused += 1
        now = self._loop.time()
        if now - stats.refusal_logged_at >= 1.0:  # one line a second, however many
            stats.refusal_logged_at = now
            log.warning(
                "refusing connections: %d open, api.max_connections is %d (%d refused so far)",
                stats.open,
                self._limits.max_connections,
                stats.refused,
            )
        self._close = True  # read nothing from it
        transport.write(_REFUSED)
        if transport.can_write_eof():
            transport.write_eof()
        # Closing at once could reset the connection before the client reads the answer.
        self._loop.call_later(_REFUSED_LINGER, self.force_close)

    def _stop_timers(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # --- deadlines ---

    def data_received(self, data: bytes) -> None:
        """Parse ``data`` request by request, then keep the header and body deadlines."""
        count = self._request_count
        end = data.find(_HEADER_END)
        if 0 <= end < len(data) - 4 and self._payload_parser is None and not self._upgraded:
            self._feed_each(data, end)
        else:  # the usual read: one request, or part of one
            _feed(self, data)
        if self._request_count != count:  # a request's headers are complete
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if self._messages:
                payload = self._messages[-1][1]
                if payload is not EMPTY_PAYLOAD and not payload.is_eof():
                    self._watch_body(payload)
        elif (
            self._header_timer is None
            and data
            and (self._body is None or self._body.is_eof())
            and not (self._close or self._force_close)
        ):  # the first bytes of the next request
            self._header_timer = self._loop.call_later(
                self._limits.header_timeout, self._headers_late
            )

    def _feed_each(self, data: bytes, end: int) -> None:
        """Feed the parser one header block at a time, and stop at the first malformed one."""
        start = 0
        while end != -1:
            cut = end + 4
            before = len(self._messages)
            _feed(self, data[start:cut])
            start = cut
            if len(self._messages) > before and isinstance(self._messages[-1][0], _ErrInfo):
                return  # the error answer closes the connection: the rest is not read
            end = data.find(_HEADER_END, start)
        if start < len(data):
            _feed(self, data[start:])

    def _watch_body(self, payload: Any) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body = payload
        self._body_timer = self._loop.call_later(self._limits.body_timeout, self._body_late)

    def _body_late(self) -> None:
        self._body_timer = None
        payload, self._body = self._body, None
        if payload is None or payload.is_eof():
            return
        self._stats.body_timeouts += 1
        log.debug(
            "a request body did not arrive within %g s (api.body_timeout_s); closing",
            self._limits.body_timeout,
        )
        payload.set_exception(BodyTimeout(f"api.body_timeout_s is {self._limits.body_timeout:g} s"))
        self.close()  # no further request on this connection

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._force_close or self._close or self.transport is None:
            return
        self._stats.header_timeouts += 1
        log.debug(
            "a request's headers did not arrive within %g s (api.header_timeout_s); closing",
            self._limits.header_timeout,
        )
        if self._request_in_progress or self._messages:
            self.close()  # answer what is in hand, then close
            return
        self.transport.write(_HEADERS_LATE)
        self.force_close()

    # --- refused uploads ---

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """Send the response; end the sending side at once when it refused an unread body."""
        done = await super().finish_response(request, resp, start_time)
        transport = self.transport
        if (
            not resp.keep_alive
            and not request.content.is_eof()
            and transport is not None
            and not transport.is_closing()
            and transport.can_write_eof()
        ):
            # The answer is all the client gets: say so now, not when the linger ends.
            transport.write_eof()
        return done

    # --- errors outside any handler ---

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The answer to a request that failed before or outside any handler."""
        error: ApiError
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            error = InternalError(INTERNAL_MESSAGE)
        else:
            reason = reason_of(exc, message)
            log.info(
                "answered %d to an unparseable request from %s: %s",
                status,
                request.remote,
                reason,
                extra={"status": status, "remote": request.remote},
            )
            error = BadRequest(f"The request is not valid HTTP/1.1: {reason}.")
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response")
        response = error_response(error, status)
        response.force_close()
        return response
