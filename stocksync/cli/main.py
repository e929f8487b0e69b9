"""The ``stocksync`` command: load the settings once, then run one subcommand.

Nothing below this package reads ``os.environ``. Each command group declares
its subcommands in its own module (:mod:`~stocksync.cli.configuration`,
:mod:`~stocksync.cli.services`, :mod:`~stocksync.cli.operations`,
:mod:`~stocksync.cli.checks`); commands that run a service import their module
only when chosen (:mod:`~stocksync.cli.launch`), so ``check-config`` or
``schema`` never pay for Faust or aiohttp. A bad configuration is reported as
one line on stderr with exit status 2, before anything starts.

Exit status: 0 done, 1 failed, 2 bad usage or configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from stocksync import __version__
from stocksync.cli import checks, configuration, operations, services
from stocksync.cli.launch import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from stocksync.cli.parsing import ENVIRONMENT, Commands, Handler
from stocksync.config import CONFIG_ENV, ConfigError
from stocksync.daemon.logs import FORMATS, LEVELS, setup_logging

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        setup_logging(args.log_level, args.log_format)
        return handler(args)
    except ConfigError as exc:
        print(f"stocksync: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``stocksync schema | head``); silence the final flush too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


_OVERVIEW = """\
Inventory availability sync: Kafka events in, an exact availability read model
in Redis out, served from memory by the API.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``stocksync`` and all its subcommands."""
    # --config and --log-level are accepted before or after the subcommand; SUPPRESS
    # keeps a subcommand from resetting a value given before it.
    shared = argparse.ArgumentParser(add_help=False)
    _add_globals(shared, default=argparse.SUPPRESS)

    parser: argparse.ArgumentParser = _Parser(  # its subcommands get its class
        prog="stocksync",
        description=_OVERVIEW,
        epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_globals(parser, default=None)
    parser.set_defaults(log_level="info", log_format=None)
    parser.add_argument("--version", action="version", version=f"stocksync {__version__}")
    commands = Commands(parser.add_subparsers(title="commands", metavar="COMMAND"), shared)
    for group in (configuration, services, operations, checks):
        group.register(commands)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse's parser, but a bad argument value is one line, like a bad setting."""

    def error(self, message: str) -> NoReturn:
        """Say a bad value in one line and exit 2; other usage errors show the usage too."""
        if message.startswith("argument "):
            self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        super().error(message)


def _add_globals(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help=f"TOML configuration file (default: ${CONFIG_ENV}, else built-in defaults)",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LEVELS,
        default=default,
        help="lowest level logged on stderr (default: info)",
    )
    parser.add_argument(
        "--log-format",
        type=str.lower,
        choices=FORMATS,
        default=default,
        help="log lines as text or JSON (default: text on a terminal, else json)",
    )
