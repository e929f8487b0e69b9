"""The ``stocksync`` command: load the settings once, then run one subcommand.

The only place that reads ``os.environ``. Commands that run a service import
their module only when chosen, so ``check-config`` or ``schema`` never pay for
Faust or aiohttp. A bad configuration is reported as one line on stderr with
exit status 2, before anything starts.

Exit status: 0 done, 1 failed, 2 bad usage or configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import importlib
import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, get_args
from urllib.parse import urlsplit, urlunsplit

import msgspec

from stocksync import __version__
from stocksync.config import (
    CONFIG_ENV,
    ENV_OVERRIDES,
    SECRET_ENV,
    ConfigError,
    Settings,
    TokenSettings,
    bootstrap_servers,
    config_path,
    load_configuration,
)
from stocksync.config.devsetup import STATE_ENV, running_setup
from stocksync.config.settings import Scope
from stocksync.daemon.logs import FORMATS, LEVELS, setup_logging

__all__ = ["build_parser", "main", "token_sha256"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

_SHORT_SECRET: Final = 16
_DURATION = re.compile(r"(?P<amount>[0-9]+)(?P<unit>[smhd])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}

Handler = Callable[[argparse.Namespace], int]


def token_sha256(secret: str) -> str:
    """The value of ``sha256`` in ``[[api.tokens]]``: lowercase hex SHA-256 of the UTF-8 secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


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


# --- the parser ---------------------------------------------------------------------

_OVERVIEW = """\
Inventory availability sync: Kafka events in, an exact availability read model
in Redis out, served from memory by the API.
"""

_ENVIRONMENT = "\n".join(
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``stocksync`` and all its subcommands."""
    # --config and --log-level are accepted before or after the subcommand; SUPPRESS
    # keeps a subcommand from resetting a value given before it.
    shared = argparse.ArgumentParser(add_help=False)
    _add_globals(shared, default=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="stocksync",
        description=_OVERVIEW,
        epilog=_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_globals(parser, default=None)
    parser.set_defaults(log_level="info", log_format=None)
    parser.add_argument("--version", action="version", version=f"stocksync {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Handler, summary: str, details: str = "") -> Any:
        sub = commands.add_parser(
            name,
            parents=[shared],
            help=summary,
            description=f"{summary}\n\n{details}".strip(),
            epilog=_ENVIRONMENT,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler, command=name)
        return sub

    command(
        "check-config",
        _check_config,
        "validate the configuration and print a summary of it",
        "Exits 0 when the configuration is valid; otherwise prints one line naming the\n"
        "field and exits 2. Token secrets and passwords are never shown, only whether\n"
        "a password is set and where it comes from.",
    )
    command(
        "schema",
        _schema,
        "print the JSON Schema of the events stocksync accepts",
        "One event or a bulk message (a JSON array of events), as in the event contract.",
    )
    hash_token = command(
        "hash-token",
        _hash_token,
        "hash an API token secret for [[api.tokens]] in the configuration",
        "Reads the secret from stdin (prompting without echo on a terminal), or makes a\n"
        "random one with --generate, and prints the TOML to add to the configuration.\n"
        "The secret itself goes to stderr, once, and is stored nowhere: hand it to the\n"
        "client. Example:\n\n"
        "  stocksync hash-token --generate --name storefront >> stocksync.toml",
    )
    hash_token.add_argument(
        "--generate", action="store_true", help="make a random secret instead of reading stdin"
    )
    hash_token.add_argument(
        "--name", default="storefront", help="the token's name in logs (default: storefront)"
    )
    hash_token.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        choices=get_args(Scope),
        help="a scope to grant; repeat for more (default: availability:read)",
    )

    command(
        "worker",
        _worker,
        "run the stream processor (Faust agents)",
        "Creates missing topics at start. Workers with the same configuration form one\n"
        "consumer group and share the partitions.",
    )
    api = command("api", _api, "run the availability API")
    api.add_argument(
        "--processes",
        type=_positive,
        default=1,
        metavar="N",
        help="serve from N processes sharing the port, restarted when one dies (default: 1)",
    )
    dev = command(
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

    feed = command(
        "feed",
        _feed,
        "run the availability feed (Kafka topic and webhooks)",
        "Publishes availability.changed to {topic_prefix}.availability.v1 and delivers it\n"
        "to the configured webhooks. Several may run: one is active, the others stand by\n"
        "and take over when it stops.",
    )
    feed_actions = feed.add_subparsers(title="actions", metavar="ACTION")
    feed_replay = feed_actions.add_parser(
        "replay",
        parents=[shared],
        help="send dead-lettered webhook deliveries again",
        description="Send the deliveries in {topic_prefix}.feed.dlq to their webhooks again.",
    )
    feed_replay.set_defaults(handler=_feed_replay, command="feed replay")
    feed_replay.add_argument("--webhook", metavar="NAME", help="only this webhook's deliveries")
    feed_replay.add_argument(
        "--since",
        type=_since,
        metavar="T",
        help="only deliveries given up at or after T: RFC 3339 or an age such as 15m, 2h",
    )
    feed_replay.add_argument(
        "--dry-run", action="store_true", help="show what would be replayed; send nothing"
    )

    produce = command(
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

    probe = command(
        "probe",
        _ops("stocksync.ops.probe"),
        "time a synthetic event and hold through the real path to the API",
        "Sends a stock event for the reserved probe SKU ([probe] sku) and times it until\n"
        "the API serves its new version; then a hold of one unit and its release. Prints\n"
        "the figures; exits 1 when a step is past its SLO or not served. With --every it\n"
        "probes until stopped and exports stocksync_probe_seconds and\n"
        "stocksync_probe_success on its own /metrics ([probe] host and port).",
    )
    probe_mode = probe.add_mutually_exclusive_group()
    probe_mode.add_argument("--once", action="store_true", help="probe once (the default)")
    probe_mode.add_argument(
        "--every", type=_interval, metavar="T", help="probe every T (30s, 2m) until stopped"
    )
    probe.add_argument(
        "--slo",
        type=_seconds,
        metavar="S",
        help="event-to-served SLO (default [probe] slo_seconds)",
    )
    probe.add_argument(
        "--hold-slo",
        type=_seconds,
        metavar="S",
        help="hold and release SLO (default [probe] hold_slo_seconds)",
    )
    probe.add_argument("--no-holds", dest="holds", action="store_false", help="skip the hold")
    probe.add_argument("--port", type=_port, metavar="N", help="port of --every's /metrics")
    _add_target(probe)

    rehearse = command(
        "rehearse",
        _ops("stocksync.ops.rehearse"),
        "rehearse peak load against a deployment and judge it by a profile's SLOs",
        "Drives stock, order and return events to the topics and single, batch and hold\n"
        "requests to the API at once, along the profile's ramp (built-in 'peak': 1x to 10x\n"
        "of a baseline), for --duration seconds; measures event-to-served freshness, API\n"
        "latency per endpoint, errors, holds, dead letters and oversold positions each\n"
        "second, and writes report.html, the plots as PNG and summary.json into --report.\n"
        "Exits 1 when an SLO fails. Its SKUs are named by the profile's sku_prefix\n"
        "(default rehearse-) and stay in the model afterwards.",
    )
    rehearse.add_argument(
        "--profile", default="peak", metavar="P", help="built-in name or TOML file (default peak)"
    )
    rehearse.add_argument(
        "--duration", type=_seconds, metavar="S", help="seconds of load (default: the profile's)"
    )
    rehearse.add_argument(
        "--report", metavar="DIR", help="where to write the report (default rehearsal-TIME)"
    )
    rehearse.add_argument(
        "--worker-url",
        metavar="URL",
        help="the worker's health server, for dead letters and oversold positions"
        " (default: the dev setup's, else worker.host and worker.port)",
    )
    _add_target(rehearse)

    dlq = command("dlq", _missing_action, "inspect and replay dead-lettered events")
    dlq_actions = dlq.add_subparsers(title="actions", metavar="ACTION")
    dlq_list = dlq_actions.add_parser(
        "list",
        parents=[shared],
        help="list dead-lettered events",
        description="List dead-lettered events, newest last.",
    )
    dlq_list.set_defaults(handler=_operation("dlq_list"), command="dlq list")
    _add_reason_limit(dlq_list)
    dlq_replay = dlq_actions.add_parser(
        "replay",
        parents=[shared],
        help="send dead-lettered events back to their source topics",
        description="Send dead-lettered events back to their source topics, unchanged.",
    )
    dlq_replay.set_defaults(handler=_operation("dlq_replay"), command="dlq replay")
    _add_reason_limit(dlq_replay)
    dlq_replay.add_argument(
        "--since",
        type=_since,
        metavar="T",
        help="only events rejected at or after T: RFC 3339 (2026-11-27T09:00:00Z) or an age"
        " such as 90s, 15m, 2h, 7d",
    )
    dlq_replay.add_argument(
        "--dry-run", action="store_true", help="show what would be replayed; send nothing"
    )

    rebuild = command(
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

    reconcile = command(
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
    return parser


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


def _add_reason_limit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason",
        type=_reason,
        metavar="R",
        help=f"only events dead-lettered for reason R: {', '.join(_reasons())}",
    )
    parser.add_argument("--limit", type=_positive, metavar="N", help="at most N events")


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


def _positive(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _interval(text: str) -> float:
    duration = _DURATION.fullmatch(text)
    if duration:
        return float(int(duration["amount"]) * _UNIT_SECONDS[duration["unit"]] or 1)
    return _seconds(text)


def _seconds(text: str) -> float:
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected seconds > 0 such as 2, 0.5 or 30s, got {text!r}"
        )
    return value


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api",
        metavar="URL",
        help="the API to look at (default [probe] api_url, else the running dev setup's,"
        " else api.host and api.port)",
    )
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="a file holding an API token (default [probe] token_file)",
    )


def _since(text: str) -> datetime:
    duration = _DURATION.fullmatch(text)
    if duration:
        seconds = int(duration["amount"]) * _UNIT_SECONDS[duration["unit"]]
        return datetime.now(UTC) - timedelta(seconds=seconds)
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


# --- handlers -------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> Settings:
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
            f" {used.broker}, Redis {_redacted(used.redis_url)} keys {used.redis_namespace}:*,"
            f" API {used.api_url}",
            file=sys.stderr,
            flush=True,
        )
    return settings


def _check_config(args: argparse.Namespace) -> int:
    from stocksync.agents.topics import topic_names  # the names the worker uses
    from stocksync.config.connections import security_summary, security_warnings

    settings = _load(args)
    topics = topic_names(settings)
    source = config_path(args.config, os.environ) or "built-in defaults"
    overrides = [name for name in ENV_OVERRIDES if name in os.environ]
    nodes = sorted({node for channel in settings.channels for node in channel.nodes})
    safety = {
        node: settings.nodes[node].safety_stock if node in settings.nodes else 0 for node in nodes
    }
    tokens = settings.api.tokens
    rows = [
        (
            "configuration",
            source + (f" (overridden by {', '.join(overrides)})" if overrides else ""),
        ),
        ("broker", f"{settings.broker} (bootstrap {', '.join(bootstrap_servers(settings))})"),
        ("redis", f"{_redacted(settings.redis_url)}, keys under {settings.redis_namespace!r}"),
        *security_summary(settings),
        (
            "topics",
            f"{', '.join(topics.sources)} in; {', '.join(topics.owned)} written by stocksync"
            f" ({settings.partitions} partitions for topics it creates)",
        ),
        *(
            (
                f"channel {c.name}",
                f"nodes {', '.join(c.nodes)}; buffer {c.buffer},"
                f" low-stock threshold {c.low_stock_threshold}; feed notify {c.notify}"
                + (f" every {c.notify_min_interval_ms} ms at most" if c.notify != "off" else ""),
            )
            for c in settings.channels
        ),
        ("nodes", ", ".join(f"{node} (safety stock {safety[node]})" for node in nodes)),
        (
            "api",
            f"{settings.api.host}:{settings.api.port}, "
            + (
                f"{len(tokens)} token(s): {', '.join(t.name for t in tokens)}"
                if tokens
                else "no tokens: the API is open to anyone who can reach it"
            ),
        ),
        (
            "worker",
            f"{settings.worker.host}:{settings.worker.port}, consumer group"
            f" {settings.worker.group_id!r}",
        ),
        (
            "feed",
            f"{settings.feed.host}:{settings.feed.port}, {settings.topic_prefix}.availability.v1; "
            + (
                "webhooks: " + ", ".join(f"{h.name} ({h.url})" for h in settings.feed.webhooks)
                if settings.feed.webhooks
                else "no webhooks"
            ),
        ),
    ]
    width = max(len(label) for label, _ in rows) + 1
    print("configuration is valid")
    for label, text in rows:
        print(f"  {label + ':':<{width}} {text}")
    for warning in security_warnings(settings):
        print(f"warning: {warning}")
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from stocksync.codecs.events import event_schema

    text = msgspec.json.format(msgspec.json.encode(event_schema()), indent=2)
    sys.stdout.write(text.decode() + "\n")
    return EXIT_OK


def _hash_token(args: argparse.Namespace) -> int:
    secret = secrets.token_urlsafe(32) if args.generate else _read_secret()
    try:
        token = _token(secret, args.name, args.scopes or ["availability:read"])
    except ValueError as exc:
        print(f"stocksync hash-token: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.generate:
        print(f"secret (shown once, give it to the client): {secret}", file=sys.stderr)
    elif len(secret) < _SHORT_SECRET:
        print(
            f"stocksync hash-token: warning: the secret is short ({len(secret)} characters);"
            " --generate makes a strong one",
            file=sys.stderr,
        )
    scopes = ", ".join(json.dumps(scope) for scope in token.scopes)
    print("[[api.tokens]]")
    print(f"name = {json.dumps(token.name, ensure_ascii=False)}")
    print(f'sha256 = "{token.sha256}"')
    print(f"scopes = [{scopes}]")
    return EXIT_OK


def _read_secret() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.read().strip()
    try:
        return getpass.getpass("token secret (not echoed): ").strip()
    except EOFError:
        return ""


def _token(secret: str, name: str, scopes: list[str]) -> TokenSettings:
    """The ``[[api.tokens]]`` entry for ``secret``; ValueError says what is wrong."""
    if not secret:
        raise ValueError("the secret is empty; pipe it on stdin or use --generate")
    if not (secret.isascii() and secret.isprintable()) or " " in secret:
        raise ValueError(
            "the secret must be printable ASCII without spaces: it travels in an HTTP header"
        )
    if not name.isprintable():
        raise ValueError(f"--name {name!r} has control characters")
    try:
        return msgspec.convert(
            {"name": name, "sha256": token_sha256(secret), "scopes": scopes}, TokenSettings
        )
    except msgspec.ValidationError:
        raise ValueError(f"--name {name!r} is invalid: expected 1-64 characters") from None


def _worker(args: argparse.Namespace) -> int:
    return _run(args, "stocksync.daemon.worker", "run")


def _api(args: argparse.Namespace) -> int:
    return _run(args, "stocksync.api.server", "run", processes=args.processes)


def _feed(args: argparse.Namespace) -> int:
    return _run(args, "stocksync.feed.service", "run")


def _feed_replay(args: argparse.Namespace) -> int:
    return _run(args, "stocksync.feed.replay", "run", args)


def _dev(args: argparse.Namespace) -> int:
    # The worker and API it starts read the same file, so pass its path on.
    config = config_path(args.config, os.environ)
    return _run(
        args,
        "stocksync.daemon.dev",
        "run",
        demo=args.demo,
        config=config,
        keep=args.keep,
        status=args.status,
        log_format=args.log_format,
    )


def _produce(args: argparse.Namespace) -> int:
    return _run(args, "stocksync.ops.produce", "run", args)


def _ops(module: str) -> Handler:
    """A handler calling ``<module>.run(settings, args)`` of an operator tool."""

    def handler(args: argparse.Namespace) -> int:
        return _run(args, module, "run", args)

    return handler


def _operation(function: str) -> Handler:
    """A handler calling ``stocksync.ops.commands.<function>(settings, args)``."""

    def handler(args: argparse.Namespace) -> int:
        return _run(args, "stocksync.ops.commands", function, args)

    return handler


def _missing_action(args: argparse.Namespace) -> int:
    print(f"stocksync {args.command}: choose an action (list, replay); see --help", file=sys.stderr)
    return EXIT_USAGE


def _run(args: argparse.Namespace, module: str, function: str, *extra: Any, **options: Any) -> int:
    """Load the settings, then import ``module`` and call ``function(settings, ...)``."""
    settings = _load(args)  # first: a bad configuration never starts anything
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


def _redacted(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
