"""``/v1/holds``: checkout holds, decided in Redis in the request's own round trip.

Each endpoint is one or two script calls of :class:`~stocksync.store.holds.HoldStore`;
nothing goes through Kafka. The replicas learn of the change from the change
stream like of any other (see :mod:`stocksync.api.model`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

import msgspec
from aiohttp import web

from stocksync.api.dispatch import HOLDS_PATH
from stocksync.api.errors import (
    BadRequest,
    HoldConflict,
    HoldEnded,
    InsufficientStock,
    NotReady,
    UnknownChannel,
    UnknownHold,
)
from stocksync.api.metrics import ApiMetrics
from stocksync.api.model import is_identifier
from stocksync.api.upload import BodyBudget, read_body
from stocksync.codecs.holds import (
    ExtendRequest,
    Hold,
    HoldLine,
    HoldRequest,
    ShortLine,
    hold_encoder,
)
from stocksync.config.settings import HoldSettings
from stocksync.readmodel.core import format_millis
from stocksync.readmodel.holds import fingerprint
from stocksync.store import StoreUnavailable
from stocksync.store.holds import HoldRecord, HoldStore

__all__ = ["HOLDS_PATH", "HoldHandlers", "hold_body"]

_T = TypeVar("_T")
_JSON: Final = {"Content-Type": "application/json"}
# Strict: "2" is not a quantity nor 1 a boolean. A whole JSON number such as 2.0 is an
# integer (as JSON Schema has it) and 2.5 is not: see HoldHandlers._decode.
_request_decoder: Final = msgspec.json.Decoder(HoldRequest)
_extend_decoder: Final = msgspec.json.Decoder(ExtendRequest)
_any_decoder: Final = msgspec.json.Decoder()


def _whole_numbers_as_int(value: Any, depth: int = 3) -> Any:
    """``value`` with every float that is a whole number made an int, ``depth`` levels
    down (a hold's numbers are at most three: body, lines, line); what is deeper fails
    the schema anyway, and a hostile body may nest deeper than Python recurses."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if depth == 0:
        return value
    if isinstance(value, list):
        return [_whole_numbers_as_int(item, depth - 1) for item in value]
    if isinstance(value, dict):
        return {key: _whole_numbers_as_int(item, depth - 1) for key, item in value.items()}
    return value


def hold_body(record: HoldRecord) -> Hold:
    """The answer of every hold endpoint for ``record``."""
    return Hold(
        hold_id=record.hold_id,
        channel=record.channel,
        status=record.status,
        expires_at=format_millis(record.expires_ms),
        lines=[HoldLine(sku=x.sku, requested=x.requested, held=x.held) for x in record.lines],
    )


def _answer(record: HoldRecord, status: int = 200) -> web.Response:
    return web.Response(status=status, body=hold_encoder.encode(hold_body(record)), headers=_JSON)


class HoldHandlers:
    """``POST /v1/holds``, ``GET|DELETE /v1/holds/{hold_id}``, ``POST .../extend``."""

    def __init__(
        self,
        store: Callable[[], HoldStore | None],
        channels: list[str],
        settings: HoldSettings,
        metrics: ApiMetrics,
        *,
        max_body_bytes: int = 1_048_576,
        body_budget: BodyBudget | None = None,
    ) -> None:
        self._store = store
        #: Bodies are read as the batch query's are: bounded in size, memory and time.
        self._max_body_bytes = max_body_bytes
        self._budget = body_budget if body_budget is not None else BodyBudget(max_body_bytes)
        self._channels = channels
        self._choices = ", ".join(repr(c) for c in channels)
        self._settings = settings
        self._metrics = metrics

    async def _body(self, request: web.Request) -> bytes:
        return await read_body(request, limit=self._max_body_bytes, budget=self._budget)

    def _holds(self) -> HoldStore:
        store = self._store()
        if store is None:
            raise NotReady("The API is starting; retry shortly.")
        return store

    def _channel(self, channel: str | None) -> str:
        if channel is None:
            if len(self._channels) != 1:
                raise BadRequest(
                    f"Several channels are configured; name one with 'channel' ({self._choices})."
                )
            return self._channels[0]
        if channel not in self._channels:
            raise UnknownChannel(
                f"Channel {channel!r} is not configured; configured: {self._choices}."
            )
        return channel

    def _ttl_ms(self, ttl_seconds: int | None) -> int:
        limits = self._settings
        ttl = limits.default_ttl_seconds if ttl_seconds is None else ttl_seconds
        if ttl > limits.max_ttl_seconds:
            raise BadRequest(
                f"ttl_seconds is {ttl}; at most {limits.max_ttl_seconds} is allowed."
            )
        return ttl * 1000

    @staticmethod
    def _decode(decoder: msgspec.json.Decoder[_T], body: bytes, what: str) -> _T:
        try:
            return decoder.decode(body)
        except msgspec.ValidationError:
            pass
        except msgspec.DecodeError:
            raise BadRequest("The body is not valid JSON.") from None
        # Only a body that failed: once more with its whole numbers (2.0) as integers.
        try:
            whole = _whole_numbers_as_int(_any_decoder.decode(body))
            return cast("_T", msgspec.convert(whole, decoder.type))
        except msgspec.ValidationError as exc:
            raise BadRequest(f"The body does not match the {what} schema: {exc}.") from None
        except msgspec.DecodeError:
            # Typed, the decoder stopped at the first value that did not fit (the 7 of
            # "7<invalid bytes>"); untyped, it read on and met what is not JSON.
            raise BadRequest("The body is not valid JSON.") from None
        except RecursionError:
            raise BadRequest(f"The body does not match the {what} schema.") from None

    @staticmethod
    def _hold_id(hold_id: str) -> str:
        if not is_identifier(hold_id):
            raise UnknownHold(f"No hold has the id {hold_id[:80]!r}.")
        return hold_id

    def _observe(self, started: float) -> None:
        self._metrics.observe_hold(time.perf_counter() - started)

    async def create(self, request: web.Request) -> web.Response:
        """Grant a hold (201), find the same one again (200), or refuse it (409)."""
        started = time.perf_counter()
        try:
            req = self._decode(_request_decoder, await self._body(request), "hold")
            channel = self._channel(req.channel)
            ttl_ms = self._ttl_ms(req.ttl_seconds)
            if len(req.lines) > self._settings.max_lines:
                raise BadRequest(
                    f"{len(req.lines)} lines; a hold may have at most "
                    f"{self._settings.max_lines}."
                )
            lines = [(line.sku, line.qty) for line in req.lines]
            if len({sku for sku, _ in lines}) != len(lines):
                raise BadRequest("Each SKU may appear on one line of a hold only.")
            try:
                created = await self._holds().create(
                    req.hold_id,
                    channel,
                    lines,
                    fingerprint=fingerprint(channel, lines),
                    ttl_ms=ttl_ms,
                    partial=req.partial,
                )
            except StoreUnavailable as exc:
                raise NotReady(f"Holds need Redis, which did not answer ({exc}).") from None
            metrics = self._metrics
            if created.outcome == "conflict":
                metrics.count_hold("conflict")
                raise HoldConflict(
                    f"Hold {req.hold_id!r} exists with another channel or other lines."
                )
            if created.outcome == "short":
                metrics.count_hold("insufficient")
                short = [
                    ShortLine(sku=sku, requested=qty, available=available)
                    for (sku, qty), available in zip(lines, created.available, strict=True)
                    if available < qty
                ]
                raise InsufficientStock(
                    f"{len(short)} of {len(lines)} lines cannot be held in full on "
                    f"channel {channel!r}; nothing is held.",
                    short,
                )
            record = created.record
            assert record is not None
            if created.outcome == "exists":
                return _answer(record)
            metrics.count_hold("held" if record.status == "held" else "partial")
            return _answer(record, 201)
        finally:
            self._observe(started)

    async def get(self, request: web.Request, hold_id: str) -> web.Response:
        """The hold and its status."""
        try:
            record = await self._holds().get(self._hold_id(hold_id))
        except StoreUnavailable as exc:
            raise NotReady(f"Holds need Redis, which did not answer ({exc}).") from None
        if record is None:
            raise UnknownHold(f"No hold has the id {hold_id!r}.")
        return _answer(record)

    async def extend(self, request: web.Request, hold_id: str) -> web.Response:
        """Move an active hold's expiry to now + ``ttl_seconds``."""
        started = time.perf_counter()
        try:
            req = self._decode(_extend_decoder, await self._body(request), "extend")
            ttl_ms = self._ttl_ms(req.ttl_seconds)
            try:
                found = await self._holds().extend(self._hold_id(hold_id), ttl_ms)
            except StoreUnavailable as exc:
                raise NotReady(f"Holds need Redis, which did not answer ({exc}).") from None
            if found is None:
                raise UnknownHold(f"No hold has the id {hold_id!r}.")
            record, extended = found
            if not extended:
                raise HoldEnded(f"Hold {hold_id!r} has ended ({record.status}).")
            return _answer(record)
        finally:
            self._observe(started)

    async def release(self, request: web.Request, hold_id: str) -> web.Response:
        """End a hold: ``released``, or the end state it had already reached."""
        started = time.perf_counter()
        try:
            try:
                found = await self._holds().release(self._hold_id(hold_id))
            except StoreUnavailable as exc:
                raise NotReady(f"Holds need Redis, which did not answer ({exc}).") from None
            if found is None:
                raise UnknownHold(f"No hold has the id {hold_id!r}.")
            record, released = found
            if released:
                self._metrics.count_hold("released")
            return _answer(record)
        finally:
            self._observe(started)
