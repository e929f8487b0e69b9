"""Load the settings once, then import the chosen command's module and run it.

A command's module is imported only when it is chosen, so ``check-config`` or
``schema`` never pay for Faust or aiohttp.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Final

from stocksync.config import Settings, load_configuration, redacted_url
from stocksync.config.devsetup import running_setup

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "load_settings",
    "run_module",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


def load_settings(args: argparse.Namespace) -> Settings:
    """The settings; without broker and Redis settings, those of a running ``stocksync dev``.

    The setup used, if any, is left on ``args.dev_setup`` for commands that need its
    other endpoints (the API's URL).
    """
    dev = running_setup(os.environ) if args.command != "dev" else None
    settings, used = load_configuration(args.config, os.environ, dev)
    args.dev_setup = used
    if used is not None:
        print(
            f"stocksync: using the running `stocksync dev` setup (pid {used.pid}): broker"
            f" {used.broker}, Redis {redacted_url(used.redis_url)} keys {used.redis_namespace}:*,"
            f" API {used.api_url}",
            file=sys.stderr,
            flush=True,
        )
    return settings


def run_module(
    args: argparse.Namespace, module: str, function: str, *extra: Any, **options: Any
) -> int:
    """Load the settings, then import ``module`` and call ``function(settings, ...)``."""
    settings = load_settings(args)  # first: a bad configuration never starts anything
    try:
        run = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        # Every command's module ships with the package: this is a broken install.
        print(
            f"stocksync {args.command}: cannot load {module}.{function} ({exc}); "
            "reinstall stocksync",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return int(run(settings, *extra, **options))

