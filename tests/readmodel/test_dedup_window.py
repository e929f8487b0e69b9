"""The (source, event_id) window: kept in the order keys were seen, pruned from the oldest."""

from __future__ import annotations

from stocksync.readmodel.core import prune_seen, remember_key


def test_pruning_drops_expired_keys_and_keeps_the_rest_in_order() -> None:
    seen: dict[str, int] = {}
    for key, at in (("a", 0), ("b", 5), ("c", 10)):
        remember_key(seen, key, at)
    prune_seen(seen, now_ms=16, window_ms=10)
    assert list(seen.items()) == [("c", 10)]


def test_a_key_seen_again_moves_to_the_end_so_older_ones_still_expire() -> None:
    seen: dict[str, int] = {}
    remember_key(seen, "a", 0)
    remember_key(seen, "b", 1)
    remember_key(seen, "a", 20)  # re-applied after its window: fresh again
    prune_seen(seen, now_ms=25, window_ms=10)
    assert list(seen.items()) == [("a", 20)]


def test_nothing_expired_leaves_the_window_alone() -> None:
    seen = {"a": 100, "b": 101}
    prune_seen(seen, now_ms=105, window_ms=10)
    assert seen == {"a": 100, "b": 101}
