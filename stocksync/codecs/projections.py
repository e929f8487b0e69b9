"""Projections: the availability of one SKU as the API serves it, and the API bodies.

:class:`Served` is what the worker stores per SKU (the ``srv`` field, see
:mod:`stocksync.store.served`): per channel the answer without detail, ready to
send, and the node detail packed once for every channel. An API replica keeps
these bytes as they are; nothing is decoded and encoded again on the way.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "ChannelAvailability",
    "ErrorBody",
    "ErrorDetail",
    "NodeAvailability",
    "QueryRequest",
    "QueryResponse",
    "Served",
    "ServedChannel",
    "SkuProjection",
    "Status",
    "projection_decoder",
    "projection_encoder",
]

Status = Literal["in_stock", "low_stock", "out_of_stock"]


class NodeAvailability(msgspec.Struct, kw_only=True, frozen=True):
    """One node of a channel, as ``detail=nodes`` shows it."""

    node: str
    available: int
    on_hand: int
    reserved: int
    quarantine: int
    safety_stock: int


class ChannelAvailability(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """``GET /v1/availability/{sku}``: one SKU on one channel (``nodes`` only with detail)."""

    sku: str
    channel: str
    available: int
    status: Status
    version: int
    updated_at: str
    #: What active holds keep of ``available`` on this channel (API answers always carry it).
    held: int | msgspec.UnsetType = msgspec.UNSET
    nodes: list[NodeAvailability] | msgspec.UnsetType = msgspec.UNSET


class SkuProjection(msgspec.Struct, kw_only=True, frozen=True):
    """Every configured channel of one SKU, with node detail: what the store keeps per SKU."""

    sku: str
    version: int
    updated_at: str
    channels: list[ChannelAvailability]


class ServedChannel(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One channel of a stored SKU: the channel's figure and its answer without detail."""

    channel: str
    #: ``available`` before holds: what a hold is granted against, and what they subtract from.
    available: int
    #: The JSON of :class:`ChannelAvailability` without ``nodes``, as ``GET`` answers it.
    document: bytes


class Served(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Everything an API replica answers for one SKU (msgpack; grows only at the end)."""

    sku: str
    version: int
    channels: list[ServedChannel]
    #: msgpack of one list per channel (in ``channels`` order) of
    #: ``[node, available, on_hand, reserved, quarantine, safety_stock]``.
    detail: bytes


class QueryRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/availability/query``."""

    skus: list[str]
    channel: str | None = None
    detail: bool = False


class QueryResponse(msgspec.Struct, kw_only=True, frozen=True):
    """Known SKUs in request order, and the ones the model has never seen."""

    items: list[ChannelAvailability]
    unknown: list[str]


class ErrorDetail(msgspec.Struct, kw_only=True, frozen=True):
    """A stable ``code`` and a sentence for people."""

    code: str
    message: str


class ErrorBody(msgspec.Struct, kw_only=True, frozen=True):
    """Every error response: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


projection_encoder = msgspec.json.Encoder()
projection_decoder = msgspec.json.Decoder(SkuProjection)
