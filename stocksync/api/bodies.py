"""Bodies of the API's operational endpoints, and the encoder of the API's bodies.

Error bodies come from :func:`stocksync.api.errors.error_body`.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

__all__ = ["HealthBody", "ReadyBody", "encode"]


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

