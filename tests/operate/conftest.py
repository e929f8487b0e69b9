"""The ``settings`` fixture: this test's topics on the session broker and its Redis database."""

from __future__ import annotations

import pytest

from stocksync.agents.topics import ensure_topics
from stocksync.config.settings import Settings
from stocksync.daemon.services import TansuBroker
from tests.operate.helpers import run


@pytest.fixture
def settings(broker: TansuBroker, redis_url: str, topic_prefix: str) -> Settings:
    """Settings on the session broker, this test's topics (created, 2 partitions) and database."""
    made = Settings(
        broker=broker.url,
        redis_url=redis_url,
        topic_prefix=topic_prefix,
        partitions=2,
        redis_namespace="ops",
    )
    run(ensure_topics(broker.url, made))
    return made
