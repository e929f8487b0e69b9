"""Projections: the availability of one SKU as the API serves it, and the API bodies."""

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
    nodes: list[NodeAvailability] | msgspec.UnsetType = msgspec.UNSET


class SkuProjection(msgspec.Struct, kw_only=True, frozen=True):
    """Every configured channel of one SKU, with node detail: what the store keeps per SKU."""

    sku: str
    version: int
    updated_at: str
    channels: list[ChannelAvailability]


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
