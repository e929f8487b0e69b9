"""Operator commands: ``dlq list``, ``dlq replay``, ``rebuild`` and ``reconcile``.

The CLI calls one function here per command with the settings and the parsed
arguments; each runs its coroutine from the modules beside it and returns the
exit status: 0 done, 1 failed or refused. Reports go to stdout, progress and
problems to stderr, audit lines to the ``stocksync.audit`` logger.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pwd
import sys
from collections.abc import Coroutine
from typing import Any, Final

from stocksync.config.settings import Settings
from stocksync.ops.access import OperateError

__all__ = ["dlq_list", "dlq_replay", "operator_name", "rebuild", "reconcile"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1


def operator_name() -> str:
    """Who runs the command, for audit lines: ``$USER``, else the login name of the uid."""
    user = os.environ.get("USER")
    if user:
        return user
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        return f"uid:{uid}"


def _run(command: str, work: Coroutine[Any, Any, int]) -> int:
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # aiokafka logs every assignment at info; keep stderr for our own lines.
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        return asyncio.run(work)
    except OperateError as exc:
        print(f"stocksync {command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    """``stocksync dlq list [--reason R] [--owner T] [--limit N] [--show-body]``."""
    from stocksync.ops.dlq import list_letters

    async def work() -> int:
        await list_letters(
            settings,
            sys.stdout,
            reason=args.reason,
            limit=args.limit,
            owner=args.owner,
            show_body=args.show_body,
        )
        return EXIT_OK

    return _run("dlq list", work())


def dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    """``stocksync dlq replay [--reason R] [--owner T] [--since T] [--dry-run] [--limit N]``."""
    from stocksync.ops.dlq import replay_letters

    async def work() -> int:
        await replay_letters(
            settings,
            sys.stdout,
            reason=args.reason,
            since=args.since,
            limit=args.limit,
            dry_run=args.dry_run,
            who=operator_name(),
            owner=args.owner,
        )
        return EXIT_OK

    return _run("dlq replay", work())


def reconcile(settings: Settings, args: argparse.Namespace) -> int:
    """``stocksync reconcile FILE [--apply] [--export CSV] [--metrics-file PATH]``."""
    from stocksync.ops.reconcile import reconcile as compare_and_apply

    return _run(
        "reconcile",
        compare_and_apply(
            settings,
            sys.stdout,
            sys.stderr,
            args.file,
            apply=args.apply,
            export=args.export,
            metrics_file=args.metrics_file,
            who=operator_name(),
        ),
    )


def rebuild(settings: Settings, args: argparse.Namespace) -> int:
    """``stocksync rebuild [--yes] [--force]``."""
    from stocksync.ops.rebuild import ask
    from stocksync.ops.rebuild import rebuild as rebuild_model

    async def work() -> int:
        await rebuild_model(
            settings,
            sys.stdout,
            sys.stderr,
            yes=args.yes,
            force=args.force,
            who=operator_name(),
            confirm=ask,
        )
        return EXIT_OK

    return _run("rebuild", work())
