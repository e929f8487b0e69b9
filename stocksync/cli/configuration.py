"""Commands about the configuration: ``check-config``, ``schema`` and ``hash-token``."""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import secrets
import sys
from typing import Final, get_args

import msgspec

from stocksync.cli.launch import EXIT_OK, EXIT_USAGE, load_settings
from stocksync.cli.parsing import Commands
from stocksync.config import (
    ENV_OVERRIDES,
    TokenSettings,
    bootstrap_servers,
    config_path,
    redacted_url,
)
from stocksync.config.settings import Scope

__all__ = ["register", "token_sha256"]

_SHORT_SECRET: Final = 16


def register(commands: Commands) -> None:
    """Add ``check-config``, ``schema`` and ``hash-token``."""
    commands.add(
        "check-config",
        _check_config,
        "validate the configuration and print a summary of it",
        "Exits 0 when the configuration is valid; otherwise prints one line naming the\n"
        "field and exits 2. Token secrets and passwords are never shown, only whether\n"
        "a password is set and where it comes from.",
    )
    commands.add(
        "schema",
        _schema,
        "print the JSON Schema of the events stocksync accepts",
        "One event or a bulk message (a JSON array of events), as in the event contract.",
    )
    hash_token = commands.add(
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


def token_sha256(secret: str) -> str:
    """The value of ``sha256`` in ``[[api.tokens]]``: lowercase hex SHA-256 of the UTF-8 secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()

def _check_config(args: argparse.Namespace) -> int:
    from stocksync.agents.topics import topic_names  # the names the worker uses
    from stocksync.config.connections import security_summary, security_warnings

    settings = load_settings(args)
    broker = settings.broker
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
        ("broker", f"{settings.broker} (bootstrap {', '.join(bootstrap_servers(broker))})"),
        ("redis", f"{redacted_url(settings.redis_url)}, keys under {settings.redis_namespace!r}"),
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
                "webhooks: "
                + ", ".join(f"{h.name} ({redacted_url(h.url)})" for h in settings.feed.webhooks)
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


