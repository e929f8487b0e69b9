"""Operator commands on the data: ``produce``, ``dlq list|replay``, ``rebuild``, ``reconcile``."""

from __future__ import annotations

import argparse
import sys

from stocksync.cli.launch import EXIT_USAGE, run_module
from stocksync.cli.parsing import Commands, Handler, positive, since
from stocksync.codecs.dlq import UNOWNED
from stocksync.config.settings import TEAMS

__all__ = ["register"]


def register(commands: Commands) -> None:
    """Add ``produce``, ``dlq list``, ``dlq replay``, ``rebuild`` and ``reconcile``."""
    produce = commands.add(
        "produce",
        _produce,
        "send events from a JSON lines file to their topics",
        "Each line of FILE (- for stdin) is one event or a bulk message (a JSON array of\n"
        "events). Each event goes to its topic by its type (stock.* to the stock topic,\n"
        "order.* to orders, return.* to returns) under the contract's key (sku, order_id,\n"
        "rma_id). Invalid lines are reported with their line numbers and not sent; the\n"
        "others are. Exits 1 when any line was rejected or failed to send.",
    )
    produce.add_argument("file", metavar="FILE", help="JSON lines to send; - reads stdin")
    produce.add_argument("--topic", help="send everything to this topic instead")
    produce.add_argument("--key", help="send every message under this key instead")

    dlq = commands.add("dlq", _missing_action, "inspect and replay dead-lettered events")
    dlq_actions = commands.actions(dlq)
    dlq_list = dlq_actions.add(
        "list",
        _operation("dlq_list"),
        "list dead-lettered events",
        "List dead-lettered events, newest last.",
    )
    _add_filters(dlq_list)
    dlq_list.add_argument(
        "--show-body",
        action="store_true",
        help="also print each event's body as received, on one line (a truncated record"
        " says how much of it was kept)",
    )
    dlq_replay = dlq_actions.add(
        "replay",
        _operation("dlq_replay"),
        "send dead-lettered events back to their source topics",
        "Send dead-lettered events back to their source topics, unchanged.",
    )
    _add_filters(dlq_replay)
    dlq_replay.add_argument(
        "--since",
        type=since,
        metavar="T",
        help="only events rejected at or after T: RFC 3339 (2026-11-27T09:00:00Z) or an age"
        " such as 90s, 15m, 2h, 7d",
    )
    dlq_replay.add_argument(
        "--dry-run", action="store_true", help="show what would be replayed; send nothing"
    )

    rebuild = commands.add(
        "rebuild",
        _operation("rebuild"),
        "rebuild the Redis read model from the topics",
        "Rebuilds the model from the topics into a new key space and switches to it in\n"
        "one step; stop the workers first. The API keeps answering from the old model\n"
        "until the switch.",
    )
    rebuild.add_argument("--yes", action="store_true", help="do it without asking")
    rebuild.add_argument(
        "--force",
        action="store_true",
        help="rebuild even while workers of the consumer group are active "
        "(their writes to the old model are lost)",
    )

    reconcile = commands.add(
        "reconcile",
        _operation("reconcile"),
        "compare the read model with a stock count file",
        "Reports every SKU and node whose stock differs from FILE; with --apply, sends\n"
        "the corrections as stock events.",
    )
    reconcile.add_argument("file", metavar="FILE", help="the stock count to compare with")
    reconcile.add_argument(
        "--apply", action="store_true", help="send corrections for the differences found"
    )
    reconcile.add_argument("--export", metavar="CSV", help="also write the differences to CSV")
    reconcile.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="also write the drift as Prometheus gauges to PATH (textfile collector format)",
    )


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason",
        type=_reason,
        metavar="R",
        help=f"only events dead-lettered for reason R: {', '.join(_reasons())}",
    )
    parser.add_argument(
        "--owner",
        type=_owner,
        metavar="T",
        help=f"only events owned by team T ([dlq.owners]): {', '.join(_owners())}"
        f" ({UNOWNED}: records written before owners existed)",
    )
    parser.add_argument("--limit", type=positive, metavar="N", help="at most N events")


def _owners() -> list[str]:
    """Every owner a dead letter can name, and the one of a record naming none."""
    return [*TEAMS, UNOWNED]


def _owner(text: str) -> str:
    valid = _owners()
    if text not in valid:
        raise argparse.ArgumentTypeError(
            f"unknown owner {text!r}; expected one of {', '.join(valid)}"
        )
    return text


def _reasons() -> list[str]:
    """Every reason a dead letter can carry."""
    from stocksync.codecs.messages import Reason

    return sorted(value for name, value in vars(Reason).items() if name.isupper())


def _reason(text: str) -> str:
    valid = _reasons()
    if text not in valid:
        raise argparse.ArgumentTypeError(
            f"unknown reason {text!r}; expected one of {', '.join(valid)}"
        )
    return text


def _produce(args: argparse.Namespace) -> int:
    return run_module(args, "stocksync.ops.produce", "run", args)


def _operation(function: str) -> Handler:
    """A handler calling ``stocksync.ops.commands.<function>(settings, args)``."""

    def handler(args: argparse.Namespace) -> int:
        return run_module(args, "stocksync.ops.commands", function, args)

    return handler


def _missing_action(args: argparse.Namespace) -> int:
    print(f"stocksync {args.command}: choose an action (list, replay); see --help", file=sys.stderr)
    return EXIT_USAGE
