"""Fixtures of the API tests.

- ``store`` (function): a synchronous client of ``redis_url``'s database, which
  holds SKU ``A`` as the worker writes it (:func:`tests.api.helpers.projection`
  with its defaults); closed after the test. A module that needs other data
  defines its own ``store``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import redis

from tests.api.helpers import projection, write

__all__ = ["store"]


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    """A client of ``redis_url``'s database, SKU ``A`` written; closed after the test."""
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        write(client, projection("A"))
        yield client
