"""Request handlers: availability from the in-memory model, health, readiness, metrics."""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Final

import msgspec
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST

from stocksync.api.bodies import HealthBody, ReadyBody, encode
from stocksync.api.errors import (
    BadRequest,
    InvalidSku,
    NotReady,
    TooManySkus,
    UnknownChannel,
    UnknownSku,
    error_response,
    not_ready,
)
from stocksync.api.etags import etag, etag_matches
from stocksync.api.metrics import ApiMetrics
from stocksync.api.model import (
    VERSION_SLOT,
    AvailabilityModel,
    SyncStatus,
    detail_document,
    is_identifier,
)
from stocksync.api.upload import BodyBudget, read_body
from stocksync.codecs.projections import QueryRequest

__all__ = ["AvailabilityHandlers", "OperationalHandlers", "no_query_parameters", "shown"]

_JSON: Final = "application/json"
_query_decoder: Final = msgspec.json.Decoder(QueryRequest)
_ITEMS_OPEN: Final = b'{"items":['
_UNKNOWN_OPEN: Final = b'],"unknown":'
_NONE_UNKNOWN: Final = b'],"unknown":[]}'
_SHOWN_MAX: Final = 80
#: Query parameters ``GET /v1/availability/{sku}`` takes.
_GET_PARAMETERS: Final = frozenset({"channel", "detail"})


def shown(value: str) -> str:
    """``value`` as a message shows it: quoted, and cut short when long."""
    if len(value) > _SHOWN_MAX:
        return f"{value[:_SHOWN_MAX]!r}... ({len(value)} characters)"
    return repr(value)


def _check_parameters(request: web.Request, allowed: frozenset[str], takes: str) -> None:
    """Refuse a query parameter the endpoint does not take, or one given twice."""
    seen: set[str] = set()
    for name, _ in request.query.items():  # items, not keys: keys are deduplicated
        if name not in allowed:
            raise BadRequest(f"Unknown query parameter {shown(name)}; this endpoint takes {takes}.")
        if name in seen:
            raise BadRequest(f"The query parameter {shown(name)} is given more than once.")
        seen.add(name)


def no_query_parameters(request: web.Request) -> None:
    """Refuse any query parameter (for endpoints that take none)."""
    if request.rel_url.raw_query_string:
        _check_parameters(request, frozenset(), "none")


class AvailabilityHandlers:
    """``GET /v1/availability/{sku}`` and ``POST /v1/availability/query``."""

    def __init__(
        self,
        model: AvailabilityModel,
        *,
        max_skus: int,
        max_body_bytes: int,
        body_budget: BodyBudget | None = None,
    ) -> None:
        self._model = model
        self._budget = body_budget if body_budget is not None else BodyBudget(max_body_bytes)
        #: Slot -> channel name, for the ETag.
        self._names = {slot: name for name, slot in model.slots.items()}
        self._entries = model.entries
        self._slots = model.slots
        self._max_skus = max_skus
        self._max_body_bytes = max_body_bytes
        self._only_slot = next(iter(model.slots.values())) if len(model.slots) == 1 else None
        self._choices = ", ".join(repr(c) for c in model.channels)
        # The query strings storefronts send, as raw bytes arrive: (slot, detail) at
        # one dict lookup, without parsing. Any other query string is parsed.
        self._plain_queries: dict[str, tuple[int, bool]] = {}
        for channel, slot in model.slots.items():
            self._plain_queries[f"channel={channel}"] = (slot, False)
            self._plain_queries[f"channel={channel}&detail=nodes"] = (slot, True)
            self._plain_queries[f"detail=nodes&channel={channel}"] = (slot, True)
        if self._only_slot is not None:
            self._plain_queries[""] = (self._only_slot, False)
            self._plain_queries["detail=nodes"] = (self._only_slot, True)

    def _slot(self, channel: str | None) -> int:
        if channel is None:
            if self._only_slot is None:
                raise BadRequest(
                    f"Several channels are configured; name one with 'channel' ({self._choices})."
                )
            return self._only_slot
        slot = self._slots.get(channel)
        if slot is None:
            raise UnknownChannel(
                f"Channel {shown(channel)} is not configured; configured: {self._choices}."
            )
        return slot

    def _parse_query(self, request: web.Request) -> tuple[int, bool]:
        _check_parameters(request, _GET_PARAMETERS, "'channel' and 'detail'")
        query = request.query
        slot = self._slot(query.get("channel"))
        detail = query.get("detail")
        if detail is not None and detail != "nodes":
            raise BadRequest(f"'detail' may only be 'nodes', not {shown(detail)}.")
        return slot, detail is not None

    def get(self, request: web.Request, sku: str) -> web.Response:
        """One SKU on one channel, with ``ETag``; ``304`` on a matching ``If-None-Match``."""
        if not self._model.loaded:
            raise NotReady("The availability model is still loading; retry shortly.")
        entry = self._entries.get(sku)
        if entry is None:
            entry = self._model.entry(sku)  # one whose holds changed since it was last read
        if entry is None and not is_identifier(sku):
            raise InvalidSku(f"SKU {shown(sku)} is not 1-64 characters from [A-Za-z0-9._:/-].")
        plain = self._plain_queries.get(request.rel_url.raw_query_string)
        slot, detail = self._parse_query(request) if plain is None else plain
        if entry is None:
            raise UnknownSku(f"SKU {shown(sku)} is not known.")
        doc = detail_document(entry, slot) if detail else entry[slot]
        if doc is None:
            raise UnknownSku(f"SKU {shown(sku)} is not known on this channel.")
        generation = self._model.generation
        if not generation:  # switching generations: no tag can be trusted yet
            return web.Response(body=doc, headers={hdrs.CONTENT_TYPE: _JSON})
        tag = etag(generation, entry[VERSION_SLOT], self._names[slot], detail)
        if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
        if if_none_match is not None and etag_matches(if_none_match, tag):
            return web.Response(status=304, headers={hdrs.ETAG: tag})
        return web.Response(body=doc, headers={hdrs.CONTENT_TYPE: _JSON, hdrs.ETAG: tag})

    async def query(self, request: web.Request) -> web.Response:
        """Many SKUs on one channel: known ones in request order, and the unknown ones."""
        no_query_parameters(request)
        if not self._model.loaded:
            raise NotReady("The availability model is still loading; retry shortly.")
        length = request.content_length
        if length is not None and length > self._max_body_bytes:
            raise TooManySkus(
                f"The body is {length} bytes; at most {self._max_body_bytes} are accepted."
                " Ask for fewer SKUs per request.",
                close=True,
            )
        body = await read_body(request, limit=self._max_body_bytes, budget=self._budget)
        try:
            req = _query_decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"The body does not match the query schema: {exc}.") from None
        except msgspec.DecodeError:
            raise BadRequest("The body is not valid JSON.") from None
        if len(req.skus) > self._max_skus:
            raise TooManySkus(f"{len(req.skus)} SKUs asked; at most {self._max_skus} per request.")
        slot = self._slot(req.channel)
        if not req.detail and len(req.skus) > 1:
            # Every SKU known on the channel (the usual case): the entries by one
            # itemgetter, their documents joined; anything else (KeyError: unknown SKU,
            # TypeError: a SKU without this channel) takes the general path below.
            # Nearly all the time goes to cache misses on the model: itemgetter and
            # join look the SKUs up in tight C loops, whose misses the CPU overlaps,
            # faster than a comprehension (benchmarks/README.md; needs 2+ SKUs: with
            # one, itemgetter returns the entry itself).
            try:
                joined = b",".join(map(itemgetter(slot), itemgetter(*req.skus)(self._entries)))
            except (KeyError, TypeError):
                pass
            else:
                payload = b"".join((_ITEMS_OPEN, joined, _NONE_UNKNOWN))
                return web.Response(body=payload, headers={"Content-Type": _JSON})
        entries = self._entries
        items: list[bytes] = []
        unknown: list[str] = []
        for sku in req.skus:
            entry = entries.get(sku) or self._model.entry(sku)
            if entry is None:
                if not is_identifier(sku):
                    raise InvalidSku(
                        f"SKU {shown(sku)} is not 1-64 characters from [A-Za-z0-9._:/-]."
                    )
                unknown.append(sku)
                continue
            doc = detail_document(entry, slot) if req.detail else entry[slot]
            if doc is None:
                unknown.append(sku)
            else:
                items.append(doc)
        payload = b"".join((_ITEMS_OPEN, b",".join(items), _UNKNOWN_OPEN, encode(unknown), b"}"))
        return web.Response(body=payload, headers={"Content-Type": _JSON})


class OperationalHandlers:
    """``/healthz``, ``/readyz``, ``/metrics`` and the OpenAPI document."""

    def __init__(
        self,
        status: Callable[[], SyncStatus | None],
        metrics: ApiMetrics,
        openapi: bytes,
    ) -> None:
        self._status = status
        self._metrics = metrics
        self._openapi = openapi
        self._health = encode(HealthBody())

    def healthz(self, request: web.Request) -> web.Response:
        """The process is alive and serving HTTP."""
        return web.Response(body=self._health, headers={"Content-Type": _JSON})

    def readyz(self, request: web.Request) -> web.Response:
        """200 once the model is loaded and following changes; 503 with the reason otherwise."""
        status = self._status()
        if status is None or not status.ready:
            reason = "the model sync has not started" if status is None else status.reason
            code = NotReady.code if status is None else status.code
            return error_response(not_ready(code, f"Not ready: {reason}."))
        body = ReadyBody(
            skus=status.skus,
            entries_behind=status.entries_behind,
            lag_seconds=round(status.lag_seconds, 3),
        )
        return web.Response(body=encode(body), headers={"Content-Type": _JSON})

    def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text exposition."""
        return web.Response(
            body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3.1 document of this API."""
        no_query_parameters(request)
        return web.Response(body=self._openapi, headers={"Content-Type": _JSON})
