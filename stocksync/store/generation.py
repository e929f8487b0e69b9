"""Generations of the read model: which key space is live, and how a new one is named.

The model lives in a generation's namespace ``{base}:{generation}``; the base
key ``{base}:generation`` names the live one (absent: the model is in the
base namespace itself, as a deployment seeded by hand may have it).
``stocksync rebuild``, and a worker healing a lost model, write a complete
model into a new generation and switch by setting that one key, then append a
:class:`~stocksync.store.layout.Reload` entry to the old generation's change
stream so followers resolve again.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["GENERATION_PATTERN", "effective_namespace", "new_generation"]

#: What a generation id looks like (``g`` + UTC time to the millisecond).
GENERATION_PATTERN = re.compile(r"^g[0-9]{8}T[0-9]{9}Z$")


def effective_namespace(namespace: str, generation: str | None) -> str:
    """The key namespace of ``generation`` under the base ``namespace`` (None: the base)."""
    return namespace if generation is None else f"{namespace}:{generation}"


def new_generation(now: datetime | None = None) -> str:
    """A new generation id, sortable by time: ``g20261127T090003123Z``."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"g{moment:%Y%m%dT%H%M%S}{moment.microsecond // 1000:03d}Z"
