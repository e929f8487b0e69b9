"""What the command modules share to declare their commands: a registrar and argument types.

Each command module has a ``register(commands)`` that adds its subcommands
through :class:`Commands`, so a command's arguments sit next to its handler.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from stocksync.config import CONFIG_ENV, ENV_OVERRIDES, SECRET_ENV
from stocksync.config.devsetup import STATE_ENV

__all__ = [
    "ENVIRONMENT",
    "Actions",
    "Commands",
    "Handler",
    "interval",
    "port",
    "positive",
    "seconds",
    "since",
]

#: A command's handler: the parsed arguments in, the exit status out.
Handler = Callable[[argparse.Namespace], int]

_DURATION = re.compile(r"(?P<amount>[0-9]+)(?P<unit>[smhd])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}

#: The epilog of ``stocksync --help`` and of every command's help.
ENVIRONMENT: Final = "\n".join(
    [
        "configuration:",
        f"  --config PATH, else ${CONFIG_ENV}, else the embedded defaults; then these",
        "  variables override single settings:",
        *(f"    {name:<24} {field}" for name, field in ENV_OVERRIDES.items()),
        "  and these give a password (they win over its password_file):",
        *(f"    {name:<24} the {table} password" for name, table in SECRET_ENV.items()),
        "  while `stocksync dev` runs, a command given no broker and no Redis settings uses",
        f"  dev's (its state file: ${STATE_ENV}, else $XDG_RUNTIME_DIR/stocksync/dev.json,",
        "  else /tmp/stocksync-UID/dev.json)",
        "",
        "exit status: 0 done, 1 failed, 2 bad usage or configuration, 130 interrupted",
    ]
)


class Commands:
    """The subcommands of ``stocksync``: each command module adds its own here."""

    def __init__(
        self,
        subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
        shared: argparse.ArgumentParser,
    ) -> None:
        self._subparsers = subparsers
        #: The options accepted before or after any subcommand (--config, --log-level).
        self.shared = shared

    def add(
        self, name: str, handler: Handler, summary: str, details: str = ""
    ) -> argparse.ArgumentParser:
        """Add the command ``name`` run by ``handler``; its parser, for its arguments."""
        sub = self._subparsers.add_parser(
            name,
            parents=[self.shared],
            help=summary,
            description=f"{summary}\n\n{details}".strip(),
            epilog=ENVIRONMENT,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler, command=name)
        return sub

    def actions(self, parser: argparse.ArgumentParser) -> Actions:
        """The actions of a command (``dlq list``, ``dlq replay``)."""
        return Actions(
            parser.add_subparsers(title="actions", metavar="ACTION"),
            self.shared,
            parser.get_default("command"),
        )


class Actions:
    """The actions of one command, each with its own handler and arguments."""

    def __init__(
        self,
        subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
        shared: argparse.ArgumentParser,
        command: str,
    ) -> None:
        self._subparsers = subparsers
        self._shared = shared
        self._command = command

    def add(
        self, name: str, handler: Handler, summary: str, description: str
    ) -> argparse.ArgumentParser:
        """Add the action ``name`` run by ``handler``; its parser, for its arguments."""
        sub = self._subparsers.add_parser(
            name, parents=[self._shared], help=summary, description=description
        )
        sub.set_defaults(handler=handler, command=f"{self._command} {name}")
        return sub


def positive(text: str) -> int:
    """A whole number >= 1."""
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def interval(text: str) -> float:
    """Seconds, given as seconds (2, 0.5, 30s) or with a unit (2m, 1h)."""
    duration = _DURATION.fullmatch(text)
    if duration:
        return float(int(duration["amount"]) * _UNIT_SECONDS[duration["unit"]] or 1)
    return seconds(text)


def seconds(text: str) -> float:
    """Seconds > 0: 2, 0.5 or 30s."""
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected seconds > 0 such as 2, 0.5 or 30s, got {text!r}"
        )
    return value


def port(text: str) -> int:
    """A TCP port, 0 to 65535."""
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def since(text: str) -> datetime:
    """A moment: an RFC 3339 time with offset, or an age before now (90s, 15m, 2h, 7d)."""
    duration = _DURATION.fullmatch(text)
    if duration:
        ago = int(duration["amount"]) * _UNIT_SECONDS[duration["unit"]]
        return datetime.now(UTC) - timedelta(seconds=ago)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"expected an RFC 3339 time with offset (2026-11-27T09:00:00Z) or an age such as"
            f" 2h, got {text!r}"
        )
    return moment.astimezone(UTC)
