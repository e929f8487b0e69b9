"""The collector settings a started worker runs with."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from stocksync.daemon.collector import YOUNG_THRESHOLD, collect_less


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_collect_less_freezes_what_exists_and_collects_young_objects_less_often() -> None:
    _, older, oldest = gc.get_threshold()
    long_lived = [{"sku": i} for i in range(1000)]
    collect_less()
    assert gc.get_freeze_count() >= len(long_lived)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, older, oldest)


@pytest.mark.usefixtures("restore_gc")
def test_cycles_made_after_are_still_collected() -> None:
    collect_less()

    class Node:
        other: object

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2
