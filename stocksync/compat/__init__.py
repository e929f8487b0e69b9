"""Every adjustment stocksync makes to the private parts of faust, mode, aiokafka and redis-py.

One module per library (:mod:`.faust`, :mod:`.mode`, :mod:`.aiokafka`, :mod:`.redis`), so each
debt has one address. Each module names the release range it was written and
measured for and checks the installed version once, at import: on any other
version its adjustments stand down, the library's stock behaviour is used
(slower, noisier, but correct), and one warning says so. Canary tests
(``tests/agents/test_consumer_delivery.py``, ``tests/agents/test_faust_plumbing.py``,
``tests/compat/``) fail when the library behaves differently under us.

This is a package of its own, not part of :mod:`stocksync.agents`, because the
worker's daemon code (log routing, shutdown) and the agents both depend on it,
and nothing else may reach into these libraries.
"""

from __future__ import annotations

import importlib.metadata
import logging

from packaging.version import InvalidVersion, Version

__all__ = ["installed_version", "supported"]

log = logging.getLogger("stocksync.compat")


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution`` (empty when it is not installed)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def supported(distribution: str, lowest: str, below: str, *, what: str) -> bool:
    """Tell whether ``lowest <= installed < below``; if not, log once that ``what`` stands down."""
    text = installed_version(distribution)
    try:
        found = Version(text)
        ok = Version(lowest) <= found < Version(below)
    except InvalidVersion:
        ok = False
    if not ok:
        log.warning(
            "%s %s is installed but stocksync's adjustments of it were written for "
            ">=%s,<%s: using its stock behaviour instead (%s)",
            distribution,
            text or "(none)",
            lowest,
            below,
            what,
            extra={"library": distribution, "version": text},
        )
    return ok
