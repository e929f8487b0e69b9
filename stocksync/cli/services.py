"""Commands that run a service: ``worker``, ``api``, ``feed`` (and ``feed replay``) and ``dev``."""

from __future__ import annotations

import argparse
import os

from stocksync.cli.launch import run_module
from stocksync.cli.parsing import Commands, positive, since
from stocksync.config import config_path

__all__ = ["register"]


def register(commands: Commands) -> None:
    """Add ``worker``, ``api``, ``dev``, ``feed`` and ``feed replay``."""
    commands.add(
        "worker",
        _worker,
        "run the stream processor (Faust agents)",
        "Creates missing topics at start. Workers with the same configuration form one\n"
        "consumer group and share the partitions.",
    )
    api = commands.add("api", _api, "run the availability API")
    api.add_argument(
        "--processes",
        type=positive,
        default=1,
        metavar="N",
        help="serve from N processes sharing the port, restarted when one dies (default: 1)",
    )
    dev = commands.add(
        "dev",
        _dev,
        "run everything on this machine: broker, Redis, worker and API",
        "Starts an embedded Kafka-compatible broker, uses the configured Redis when it\n"
        "answers (keys under {redis_namespace}-dev) or starts a local one, then the worker\n"
        "and the API; says it is up once the API serves the demo data, with example\n"
        "requests. While it runs, other stocksync commands without broker or Redis\n"
        "settings use it, and a status line comes every few seconds. Ctrl-C stops it\n"
        "(exit 0) and removes its Redis keys and temporary folder unless --keep.",
    )
    dev.add_argument(
        "--no-demo", dest="demo", action="store_false", help="start empty, without demo data"
    )
    dev.add_argument(
        "--keep",
        action="store_true",
        help="keep the Redis keys and the folder of logs at exit (default: remove them)",
    )
    dev.add_argument(
        "--quiet",
        "--no-status",
        dest="status",
        action="store_false",
        help="no status line every few seconds",
    )

    feed = commands.add(
        "feed",
        _feed,
        "run the availability feed (Kafka topic and webhooks)",
        "Publishes availability.changed to {topic_prefix}.availability.v1 and delivers it\n"
        "to the configured webhooks. Several may run: one is active, the others stand by\n"
        "and take over when it stops.",
    )
    feed_replay = commands.actions(feed).add(
        "replay",
        _feed_replay,
        "send dead-lettered webhook deliveries again",
        "Send the deliveries in {topic_prefix}.feed.dlq to their webhooks again.",
    )
    feed_replay.add_argument("--webhook", metavar="NAME", help="only this webhook's deliveries")
    feed_replay.add_argument(
        "--since",
        type=since,
        metavar="T",
        help="only deliveries given up at or after T: RFC 3339 or an age such as 15m, 2h",
    )
    feed_replay.add_argument(
        "--dry-run", action="store_true", help="show what would be replayed; send nothing"
    )


def _worker(args: argparse.Namespace) -> int:
    return run_module(args, "stocksync.daemon.worker", "run")


def _api(args: argparse.Namespace) -> int:
    return run_module(args, "stocksync.api.server", "run", processes=args.processes)


def _feed(args: argparse.Namespace) -> int:
    return run_module(args, "stocksync.feed.service", "run")


def _feed_replay(args: argparse.Namespace) -> int:
    return run_module(args, "stocksync.feed.replay", "run", args)


def _dev(args: argparse.Namespace) -> int:
    # The worker and API it starts read the same file, so pass its path on.
    config = config_path(args.config, os.environ)
    return run_module(
        args,
        "stocksync.daemon.dev",
        "run",
        demo=args.demo,
        config=config,
        keep=args.keep,
        status=args.status,
        log_format=args.log_format,
    )
