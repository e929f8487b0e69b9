"""Garbage collector settings for long-running processes that allocate per event or request.

CPython collects its youngest generation every 700 container allocations by
default. The worker allocates several containers per event (messages, events,
effects, projections), so the collector ran every few events and walked the
long-lived objects of Faust and the position cache far more often than they
change: a large share of the translate and apply stages' CPU (the figure is in
``benchmarks/README.md``, "Figures behind design choices").

:func:`collect_less`, called once a process has started, moves everything
allocated so far (modules, the Faust app, settings) out of the collector's
sight with :func:`gc.freeze` and collects the youngest generation every
50,000 allocations. Nothing is turned off: reference cycles are still found,
only later, and what they hold is a few megabytes at most.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["YOUNG_THRESHOLD", "collect_less"]

#: Container allocations between collections of the youngest generation.
YOUNG_THRESHOLD: Final = 50_000


def collect_less() -> None:
    """Freeze what exists now and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
