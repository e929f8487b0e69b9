"""Requests aiohttp cannot parse get the contract's JSON error and one log line.

aiohttp answers a request it cannot parse (an unknown method, a bad header, a
control byte in the path, a line too long) itself, before any handler sees
it: with a ``text/plain`` body, and with an ERROR log entry carrying the
parser's traceback for every such request, so any client could fill the log.
The contract wants every error as ``{"error": {"code": ..., "message": ...}}``.
:class:`JsonErrorServer` makes connections with :class:`JsonErrorProtocol`,
which answers those requests ``bad_request`` (their status stays aiohttp's)
and logs one INFO line; a server error keeps aiohttp's log with its traceback
and is answered ``internal`` without detail.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from stocksync.api.errors import ApiError, BadRequest, InternalError
from stocksync.api.middleware import INTERNAL_MESSAGE, error_response

__all__ = ["JsonErrorProtocol", "JsonErrorServer", "reason_of"]

log = logging.getLogger("stocksync.api")


def reason_of(exc: BaseException | None, message: str | None) -> str:
    """The first line of the parser's complaint, e.g. ``Invalid method encountered``."""
    lines = str(getattr(exc, "message", None) or message or "").strip().splitlines()
    return (lines[0].rstrip(":").strip() if lines else "") or "malformed request"


class JsonErrorProtocol(RequestHandler):
    """aiohttp's connection handler, answering requests it could not parse in JSON."""

    __slots__ = ()

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

class JsonErrorServer(web.Server):
    """aiohttp's low-level server with :class:`JsonErrorProtocol` connections."""

    def __call__(self) -> RequestHandler:
        return JsonErrorProtocol(self, loop=self._loop, **self._kwargs)
