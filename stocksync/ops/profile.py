"""Rehearsal profiles: what load ``stocksync rehearse`` drives, for how long, and its SLOs.

A profile is a TOML file (or the built-in ``peak``)::

    name = "peak"
    duration_seconds = 60      # --duration wins
    skus = 200                 # SKUs the load spreads over, named {sku_prefix}0001...
    scarce_skus = 3            # SKUs with little stock ({sku_prefix}scarce-1...) that a
    scarce_share = 0.3         # share of the holds asks for: some are refused
    ramp_from = 1.0            # the baseline's multiple at the start ...
    ramp_to = 10.0             # ... and at the end, linearly in between

    [baseline]                 # per second at 1x
    stock = 10.0               # stock.adjusted / stock.snapshot events
    orders = 5.0               # order.created / order.cancelled events
    returns = 1.0              # return.received / return.inspected events
    single = 40.0              # GET /v1/availability/{sku}
    batch = 4.0                # POST /v1/availability/query of batch_size SKUs
    holds = 4.0                # POST /v1/holds (each released again a moment later)
    batch_size = 20

    [slo]                      # each one optional; a missing one is not checked
    freshness_p99_seconds = 2.0
    api_p99_seconds = 0.05
    api_p999_seconds = 0.25
    error_ratio = 0.001
    dead_letters = 0
    oversold = 0

Load is bounded: at most :data:`MAX_DURATION` seconds and :data:`MAX_RATE`
actions per second of any kind, whatever the profile says.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from stocksync.codecs.events import Identifier

__all__ = ["BUILT_IN", "MAX_DURATION", "MAX_RATE", "Baseline", "Profile", "Slo", "load_profile"]

#: Longest rehearsal, in seconds.
MAX_DURATION: Final = 3600.0
#: Most actions per second of any one kind at the top of the ramp.
MAX_RATE: Final = 5000.0

Rate = Annotated[float, Meta(ge=0, le=MAX_RATE)]
Seconds = Annotated[float, Meta(gt=0)]


class _Table(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Profile tables reject unknown keys: a typo must not quietly drop a load."""


class Baseline(_Table, frozen=True):
    """Actions per second at 1x."""

    stock: Rate = 10.0
    orders: Rate = 5.0
    returns: Rate = 1.0
    single: Rate = 40.0
    batch: Rate = 4.0
    holds: Rate = 4.0
    batch_size: Annotated[int, Meta(ge=1, le=1000)] = 20


class Slo(_Table, frozen=True):
    """Thresholds the rehearsal is judged by; None is not checked."""

    #: p99 of event-to-served freshness (by version) over the whole run.
    freshness_p99_seconds: Seconds | None = 2.0
    #: p99 and p99.9 of API latency, every endpoint together.
    api_p99_seconds: Seconds | None = 0.05
    api_p999_seconds: Seconds | None = 0.25
    #: Requests answered with an error (or not at all) per request sent; a refused hold is
    #: an answer, not an error.
    error_ratio: Annotated[float, Meta(ge=0, le=1)] | None = 0.001
    #: Most dead letters during the run (the load only sends valid events).
    dead_letters: Annotated[int, Meta(ge=0)] | None = 0
    #: Most SKU-node positions oversold at any second.
    oversold: Annotated[int, Meta(ge=0)] | None = 0


class Profile(_Table, frozen=True):
    """A rehearsal: load, ramp, duration and SLOs."""

    name: Annotated[str, Meta(min_length=1, max_length=64)] = "peak"
    description: str = ""
    duration_seconds: Annotated[float, Meta(gt=0, le=MAX_DURATION)] = 60.0
    skus: Annotated[int, Meta(ge=1, le=100_000)] = 200
    sku_prefix: Identifier = "rehearse-"
    scarce_skus: Annotated[int, Meta(ge=0, le=1000)] = 3
    scarce_share: Annotated[float, Meta(ge=0, le=1)] = 0.3
    ramp_from: Annotated[float, Meta(ge=0)] = 1.0
    ramp_to: Annotated[float, Meta(ge=0)] = 10.0
    baseline: Baseline = msgspec.field(default_factory=Baseline)
    slo: Slo = msgspec.field(default_factory=Slo)

    def multiplier(self, elapsed: float, duration: float) -> float:
        """The baseline's multiple ``elapsed`` seconds into a run of ``duration``."""
        share = min(max(elapsed / duration, 0.0), 1.0) if duration > 0 else 1.0
        return self.ramp_from + (self.ramp_to - self.ramp_from) * share


#: Profiles known by name.
BUILT_IN: Final = {
    "peak": Profile(
        name="peak",
        description="a ramp from 1x to 10x of a baseline of stock, order and return events"
        " and of single, batch and hold requests",
    )
}


def load_profile(given: str) -> Profile:
    """The built-in profile named ``given``, else the TOML file at that path; ValueError."""
    if given in BUILT_IN:
        return BUILT_IN[given]
    path = Path(given)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"profile {given!r} is neither built in ({', '.join(BUILT_IN)}) nor a file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"profile {given!r} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"profile {given!r} is not valid TOML: {exc}") from None
    data.setdefault("name", path.stem[:64] or "profile")
    try:
        profile = msgspec.convert(data, Profile)
    except msgspec.ValidationError as exc:
        raise ValueError(f"profile {given!r} is invalid: {exc}") from None
    top = max(profile.ramp_from, profile.ramp_to)
    b = profile.baseline
    for kind in ("stock", "orders", "returns", "single", "batch", "holds"):
        if getattr(b, kind) * top > MAX_RATE:
            raise ValueError(
                f"profile {given!r}: baseline.{kind} x {top:g} is over {MAX_RATE:g}/s; lower it"
            )
    return profile
