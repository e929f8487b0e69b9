"""ETags of availability answers: different whenever the answers can differ.

A version alone is not enough: versions start again in a rebuilt generation,
and one version is answered as several bodies (per channel, with or without
node detail). The tag is built from all four, so ``If-None-Match`` never gets
``304`` for a changed body, across rebuilds and across replicas serving the
same generation.
"""

from __future__ import annotations

import functools
import hashlib

__all__ = ["etag", "etag_matches"]


@functools.lru_cache(maxsize=8)
def _generation_tag(generation: str) -> str:
    """A short, stable stand-in for a generation's name (the same in every replica)."""
    return hashlib.sha256(generation.encode()).hexdigest()[:10]


def etag(generation: str, version: int, channel: str, detail: bool) -> str:
    """The quoted ETag of the answer for one SKU at ``version`` in ``generation``."""
    # ';' is in no identifier, so the parts cannot run into each other.
    suffix = ";nodes" if detail else ""
    return f'"{_generation_tag(generation)};{version};{channel}{suffix}"'


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison of an ``If-None-Match`` list against ``etag`` (RFC 9110 13.1.2)."""
    if if_none_match == etag:
        return True
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False
