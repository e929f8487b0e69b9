"""The settings Struct: everything stocksync is configured with, validated once at start.

Built by :func:`stocksync.config.loader.load_settings` from a TOML file and the
``STOCKSYNC_*`` environment variables, then passed down; nothing below the CLI
reads the environment. Unknown keys are errors, so a typo never passes silently.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from stocksync.codecs.events import Identifier

__all__ = [
    "ApiSettings",
    "ChannelSettings",
    "NodeSettings",
    "Scope",
    "Settings",
    "TokenSettings",
    "WorkerSettings",
]

Port = Annotated[int, Meta(ge=0, le=65535)]
NonNegative = Annotated[int, Meta(ge=0)]
Positive = Annotated[int, Meta(gt=0)]
Scope = Literal["availability:read", "admin"]
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$", description="lowercase hex SHA-256")]
# Kafka topic names allow only [A-Za-z0-9._-]; an identifier's ':' or '/' would
# pass here and fail later, when the worker creates its topics.
TopicPrefix = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="1-64 characters from [A-Za-z0-9._-] (legal in Kafka topic names)",
    ),
]


class _Config(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Configuration tables reject unknown keys."""


class ChannelSettings(_Config, frozen=True):
    """A sales channel: the nodes it sells from, a buffer and the low-stock band."""

    name: Identifier
    nodes: Annotated[list[Identifier], Meta(min_length=1)]
    buffer: NonNegative = 0
    low_stock_threshold: NonNegative = 0


class NodeSettings(_Config, frozen=True):
    """Defaults of one node."""

    safety_stock: NonNegative = 0


class TokenSettings(_Config, frozen=True):
    """An API token, stored only as the SHA-256 of the secret."""

    name: Annotated[str, Meta(min_length=1, max_length=64)]
    sha256: Sha256Hex
    scopes: Annotated[list[Scope], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["availability:read"]
    )
    #: Sustained requests per second for this token; 0 means unlimited.
    rate: Annotated[float, Meta(ge=0)] = 0.0
    #: Bucket size; 0 means ``max(1, rate)``.
    burst: NonNegative = 0


class ApiSettings(_Config, frozen=True):
    """The availability API."""

    host: str = "127.0.0.1"
    port: Port = 8080
    #: Most SKUs one batch query may ask for (more is 413 too_many_skus).
    max_skus: Positive = 1000
    #: Largest request body accepted.
    max_body_bytes: Positive = 1_048_576
    #: JSON access log: off, a sample of requests, or every request.
    access_log: Literal["off", "sampled", "all"] = "off"
    access_log_sample: Annotated[float, Meta(ge=0, le=1)] = 0.01
    #: SKUs loaded per page when warming the model from Redis.
    load_page: Positive = 5000
    tokens: list[TokenSettings] = msgspec.field(default_factory=list)


class WorkerSettings(_Config, frozen=True):
    """The stream processor."""

    #: Address of the worker's own /healthz, /readyz, /metrics; port 0 picks a free one.
    host: str = "127.0.0.1"
    port: Port = 8081
    #: Most events taken per batch, and how long to wait for a batch to fill.
    batch_size: Positive = 2000
    batch_window_ms: Positive = 50
    #: (source, event_id) de-duplication window; the contract asks for at least 24 h.
    dedup_window_hours: Annotated[float, Meta(ge=24)] = 24.0
    #: Entries kept on the change stream the API follows (approximate cap).
    changes_maxlen: Positive = 1_000_000
    #: Days an order or RMA state is kept after its last event.
    state_ttl_days: Positive = 90
    #: Consumer group id; workers with the same one share the partitions.
    group_id: Identifier = "stocksync"
    #: Most seconds a SIGTERM may take to drain and commit.
    shutdown_timeout: Annotated[float, Meta(gt=0)] = 15.0


class Settings(_Config, frozen=True):
    """Everything stocksync is configured with."""

    #: Kafka bootstrap, ``kafka://host:port[;host:port]`` (the loader also takes a bare
    #: ``host:port`` and stores it in this form).
    broker: str = "kafka://127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Topics are ``{topic_prefix}.stock.v1``, ``.orders.v1``, ``.returns.v1``, ``.dlq``,
    #: ``.effects.v1``.
    topic_prefix: TopicPrefix = "stocksync"
    #: Partitions of topics stocksync creates (effects, and missing source topics, dlq).
    partitions: Annotated[int, Meta(ge=1, le=1024)] = 8
    #: Prefix of every Redis key.
    redis_namespace: Identifier = "stocksync"
    channels: list[ChannelSettings] = msgspec.field(
        default_factory=lambda: [
            ChannelSettings(name="web", nodes=["dc-east", "dc-west"], low_stock_threshold=5)
        ]
    )
    nodes: dict[Identifier, NodeSettings] = msgspec.field(default_factory=dict)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    worker: WorkerSettings = msgspec.field(default_factory=WorkerSettings)
