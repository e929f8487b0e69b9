"""Generations of the read model: which Redis key space is live.

``stocksync rebuild`` writes a complete model into a fresh key space beside
the live one, then switches over by setting one pointer key. The effective
namespace of the live model is::

    {redis_namespace}                 when {redis_namespace}:generation is absent
    {redis_namespace}:{generation}    otherwise

Every process resolves it at start with :func:`resolve_namespace`. On a
switch, the rebuild also appends a :data:`RELOAD_FIELD` entry to the OLD
generation's change stream (fields ``reload`` = the new effective namespace,
``generation`` = its id), so an API replica following that stream knows to
resolve again and reload; the entry has no ``sku`` field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import redis.asyncio as aioredis

from stocksync.readmodel.keys import Keys

__all__ = [
    "GENERATION_FIELD",
    "GENERATION_PATTERN",
    "RELOAD_FIELD",
    "effective_namespace",
    "new_generation",
    "resolve_namespace",
]

#: Change-stream field of a reload marker: the new effective namespace.
RELOAD_FIELD = "reload"
#: Change-stream field of a reload marker: the new generation id.
GENERATION_FIELD = "generation"
#: What a generation id looks like (``g`` + UTC time to the millisecond).
GENERATION_PATTERN = re.compile(r"^g[0-9]{8}T[0-9]{9}Z$")


def effective_namespace(namespace: str, generation: str | None) -> str:
    """The key namespace of ``generation`` under the base ``namespace`` (None: the base)."""
    return namespace if generation is None else f"{namespace}:{generation}"


def new_generation(now: datetime | None = None) -> str:
    """A new generation id, sortable by time: ``g20261127T090003123Z``."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"g{moment:%Y%m%dT%H%M%S}{moment.microsecond // 1000:03d}Z"


async def resolve_namespace(client: aioredis.Redis, namespace: str) -> str:
    """The effective namespace of the live model under base ``namespace`` (one GET)."""
    raw = await client.get(Keys(namespace).generation())
    if raw is None:
        return namespace
    generation = raw.decode() if isinstance(raw, bytes) else str(raw)
    return effective_namespace(namespace, generation)
