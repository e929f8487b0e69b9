"""Bodies of the API's operational endpoints, and the encoder of every API body."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from stocksync.codecs.projections import ErrorBody, ErrorDetail

__all__ = ["HealthBody", "ReadyBody", "encode", "error_body"]


class HealthBody(msgspec.Struct, kw_only=True, frozen=True):
    """``GET /healthz``: the process is alive."""

    status: Literal["ok"] = "ok"


class ReadyBody(msgspec.Struct, kw_only=True, frozen=True):
    """``GET /readyz`` when ready: the model is loaded and following changes."""

    status: Literal["ready"] = "ready"
    skus: int
    entries_behind: int
    lag_seconds: float


_encoder: Final = msgspec.json.Encoder()
encode: Final = _encoder.encode


def error_body(code: str, message: str) -> bytes:
    """``{"error": {"code": ..., "message": ...}}`` as JSON bytes."""
    return _encoder.encode(ErrorBody(error=ErrorDetail(code=code, message=message)))
