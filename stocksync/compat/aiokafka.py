"""Adjustments to aiokafka's private parts.

- :func:`shorten_fetch_wait`: a consumer's fetch wait (``_fetch_max_wait_ms``),
  which Faust hard-codes to 1,500 ms.
- :func:`forbid_topic_auto_creation`: every Metadata request of this process
  says ``allow_auto_topic_creation=False`` (aiokafka always sends True), so a
  consumer or producer that names a missing topic never makes the broker
  create it with its default partition count; the worker recreates missing
  topics itself, with the configured counts.
- :func:`on_offset_reset`: hear of every partition whose fetch position was
  reset by the offset reset policy (no committed offset, or the committed one
  out of range), through ``TopicPartitionState.reset_to``.

Written for aiokafka 0.14.x; on another version these stand down and say so:
the fetch wait stays Faust's, a broker may auto-create missing topics, and only
start-up and rebalances (not a reset while running) can reveal a recreated topic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from aiokafka import client as aiokafka_client
from aiokafka.consumer.subscription_state import TopicPartitionState
from aiokafka.protocol.metadata import MetadataRequest

from stocksync.compat import supported

__all__ = [
    "ACTIVE",
    "check",
    "forbid_topic_auto_creation",
    "on_offset_reset",
    "shorten_fetch_wait",
]

log = logging.getLogger("stocksync.compat")

DISTRIBUTION = "aiokafka"
LOWEST = "0.14.0"
BELOW = "0.15"


def check() -> bool:
    """Tell whether the installed aiokafka is one these adjustments were written for."""
    return supported(
        DISTRIBUTION,
        LOWEST,
        BELOW,
        what="fetches wait 1.5 s at the broker, a broker may auto-create missing topics, "
        "and offset resets while running go unnoticed",
    )


#: Whether the adjustments are in force (decided once, at import).
ACTIVE = check()


def shorten_fetch_wait(consumer: Any, wait_ms: int) -> bool:
    """Make ``consumer`` (an ``AIOKafkaConsumer``) wait at most ``wait_ms`` per fetch."""
    if not ACTIVE:
        return False
    consumer._fetch_max_wait_ms = wait_ms
    return True


class _MetadataRequestNoAutoCreate(MetadataRequest):  # type: ignore[misc]
    """A Metadata request that never asks the broker to create the topics it names."""

    def __init__(
        self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = False
    ) -> None:
        super().__init__(topics, allow_auto_topic_creation)


def forbid_topic_auto_creation() -> bool:
    """Make every aiokafka client of this process ask for metadata without auto-creation."""
    if not ACTIVE:
        return False
    aiokafka_client.MetadataRequest = _MetadataRequestNoAutoCreate
    return True


#: Called as ``listener(topic, partition, new_offset)`` from the consumer's own thread.
ResetListener = Callable[[str, int, int], None]
_listeners: list[ResetListener] = []
_hook_lock = threading.Lock()
_stock_reset_to: Callable[[Any, int], None] | None = None


def _reset_to(state: Any, position: int) -> None:
    by_policy = state._reset_strategy is not None
    assert _stock_reset_to is not None
    _stock_reset_to(state, position)
    if not (by_policy and _listeners):
        return
    for tp, each in list(state._assignment._tp_state.items()):
        if each is state:
            for listener in list(_listeners):
                try:
                    listener(tp.topic, tp.partition, position)
                except Exception:  # a listener must never break the fetcher
                    log.exception("an offset-reset listener failed")
            return


def on_offset_reset(listener: ResetListener) -> Callable[[], None]:
    """Call ``listener`` for every offset reset by policy; returns a function that removes it.

    Resets to a committed offset are not reported, only the policy's
    (``auto_offset_reset``): no committed offset, or the committed one is out of range.
    """
    global _stock_reset_to
    if not ACTIVE:
        return lambda: None
    with _hook_lock:
        if _stock_reset_to is None:
            _stock_reset_to = TopicPartitionState.reset_to
            TopicPartitionState.reset_to = _reset_to
        _listeners.append(listener)

    def remove() -> None:
        with _hook_lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return remove
