"""The availability API as an operator tool sees it: one aiohttp session, typed answers.

Where the API is: ``--api URL``, else ``probe.api_url``, else the running dev
setup's, else ``api.host`` and ``api.port`` (a wildcard host taken as loopback).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec

from stocksync.codecs.holds import Hold, HoldLineRequest, HoldRequest
from stocksync.codecs.projections import ChannelAvailability, QueryRequest, QueryResponse
from stocksync.config.addresses import redacted_url
from stocksync.config.devsetup import DevSetup
from stocksync.config.settings import Settings

__all__ = ["Answer", "ApiClient", "api_url", "read_token"]

_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::", "[::]"})
_availability = msgspec.json.Decoder(ChannelAvailability)
_query = msgspec.json.Decoder(QueryResponse)
_hold = msgspec.json.Decoder(Hold)


class _Error(msgspec.Struct):
    code: str = "unknown"


class _ErrorBody(msgspec.Struct):
    error: _Error


_error = msgspec.json.Decoder(_ErrorBody)


def api_url(settings: Settings, dev: DevSetup | None, given: str | None = None) -> str:
    """The base URL of the API to look at, without a trailing slash."""
    if given:
        return given.rstrip("/")
    if settings.probe.api_url:
        return settings.probe.api_url.rstrip("/")
    if dev is not None:
        return dev.api_url.rstrip("/")
    host = settings.api.host
    host = "127.0.0.1" if host in _WILDCARDS else host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{settings.api.port}"


def read_token(path: str | None) -> str | None:
    """The API token in the file at ``path`` (first line), or None without a file."""
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the token file {path!r}: {exc}") from None
    if not text:
        raise ValueError(f"the token file {path!r} is empty")
    return text.splitlines()[0]


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer of the API: status, error code (``""`` on success), seconds taken."""

    status: int
    code: str
    seconds: float
    body: bytes
    etag: str | None = None

    @property
    def ok(self) -> bool:
        """A 2xx or 304 answer."""
        return 200 <= self.status < 300 or self.status == 304


def _code(status: int, body: bytes) -> str:
    if 200 <= status < 300 or status == 304:
        return ""
    try:
        return _error.decode(body).error.code
    except (msgspec.DecodeError, msgspec.ValidationError):
        return f"http_{status}"


class ApiClient:
    """The few API calls the probe and the rehearsal make; transport failures are answers too."""

    def __init__(
        self, base: str, token: str | None = None, *, timeout: float = 10.0, connections: int = 100
    ) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"the API URL {redacted_url(base)!r} is not an http:// or https:// URL"
            )
        self.base = base.rstrip("/")
        #: Sent to the API only, never to another URL :meth:`fetch` reads.
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(
            headers={"Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(limit=connections),
        )

    async def close(self) -> None:
        """Close the connections."""
        await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request; a connection failure or timeout is an answer with status 0."""
        started = time.perf_counter()
        extra = {**self._auth, **(headers or {})}
        if body is not None:
            extra["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method, self.base + path, data=body, headers=extra
            ) as response:
                data = await response.read()
                status = response.status
                etag = response.headers.get("ETag")
        except TimeoutError:
            return Answer(0, "timeout", time.perf_counter() - started, b"")
        except aiohttp.ClientError as exc:
            return Answer(0, _transport(exc), time.perf_counter() - started, b"")
        return Answer(status, _code(status, data), time.perf_counter() - started, data, etag)

    async def fetch(self, url: str) -> Answer:
        """``GET`` of another URL with the same session (the worker's ``/metrics``)."""
        started = time.perf_counter()
        try:
            async with self._session.get(url) as response:
                data = await response.read()
                return Answer(
                    response.status,
                    _code(response.status, data),
                    time.perf_counter() - started,
                    data,
                )
        except TimeoutError:
            return Answer(0, "timeout", time.perf_counter() - started, b"")
        except aiohttp.ClientError as exc:
            return Answer(0, _transport(exc), time.perf_counter() - started, b"")

    async def availability(
        self, sku: str, channel: str, *, detail: bool = False, etag: str | None = None
    ) -> Answer:
        """``GET /v1/availability/{sku}``; with ``etag``, a 304 while it has not changed."""
        query = f"?channel={quote(channel, safe='')}" + ("&detail=nodes" if detail else "")
        headers = {"If-None-Match": etag} if etag else None
        return await self.call(
            "GET", f"/v1/availability/{quote(sku, safe='')}{query}", headers=headers
        )

    async def query(self, skus: list[str], channel: str) -> Answer:
        """``POST /v1/availability/query``."""
        body = msgspec.json.encode(QueryRequest(skus=skus, channel=channel))
        return await self.call("POST", "/v1/availability/query", body)

    async def hold(
        self, hold_id: str, channel: str, lines: list[tuple[str, int]], ttl_seconds: int
    ) -> Answer:
        """``POST /v1/holds``, all or nothing."""
        request = HoldRequest(
            hold_id=hold_id,
            channel=channel,
            ttl_seconds=ttl_seconds,
            lines=[HoldLineRequest(sku=sku, qty=qty) for sku, qty in lines],
        )
        return await self.call("POST", "/v1/holds", msgspec.json.encode(request))

    async def release(self, hold_id: str) -> Answer:
        """``DELETE /v1/holds/{hold_id}``."""
        return await self.call("DELETE", f"/v1/holds/{quote(hold_id, safe='')}")

    @staticmethod
    def served(answer: Answer) -> ChannelAvailability | None:
        """The figure a ``200`` availability answer carries, else None."""
        if answer.status != 200:
            return None
        try:
            return _availability.decode(answer.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    @staticmethod
    def queried(answer: Answer) -> QueryResponse | None:
        """The items of a ``200`` query answer, else None."""
        if answer.status != 200:
            return None
        try:
            return _query.decode(answer.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    @staticmethod
    def held(answer: Answer) -> Hold | None:
        """The hold a ``200``/``201`` holds answer carries, else None."""
        if answer.status not in (200, 201):
            return None
        try:
            return _hold.decode(answer.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None


def _transport(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection_refused"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    return "transport_error"
