"""The settings Struct: everything stocksync is configured with, validated once at start.

Built by :func:`stocksync.config.loader.load_settings` from a TOML file and the
``STOCKSYNC_*`` environment variables, then passed down; nothing below the CLI
reads the environment. Unknown keys are errors, so a typo never passes silently.

Passwords of the Kafka and Redis connections are never configuration values:
the TOML names only a ``password_file``, and the loader reads that file (or
``STOCKSYNC_KAFKA_PASSWORD`` / ``STOCKSYNC_REDIS_PASSWORD`` from the ``env`` the
CLI hands it, which wins) into a :class:`Secret` on ``kafka.password`` /
``redis.password``. A Secret is not a string: ``repr``, ``str`` and format give
``***``, JSON encoding refuses it, and only ``reveal()`` gives the value, which
the client option builders of :mod:`stocksync.config.connections` call. So the
settings can be passed down, printed and logged whole without leaking it.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from stocksync.codecs.events import Identifier

__all__ = [
    "TEAMS",
    "ApiSettings",
    "ChannelSettings",
    "DlqSettings",
    "FeedSettings",
    "HoldSettings",
    "KafkaSecurityProtocol",
    "KafkaSecuritySettings",
    "NodeSettings",
    "ProbeSettings",
    "RedisSecuritySettings",
    "SaslMechanism",
    "Scope",
    "Secret",
    "Settings",
    "Team",
    "TokenSettings",
    "TopicOwnerSettings",
    "WebhookSettings",
    "WorkerSettings",
    "is_probe_sku",
]

Port = Annotated[int, Meta(ge=0, le=65535)]
NonNegative = Annotated[int, Meta(ge=0)]
Positive = Annotated[int, Meta(gt=0)]
Seconds = Annotated[float, Meta(gt=0, le=86400)]
Scope = Literal["availability:read", "holds:write", "admin"]
Sha256Hex = Annotated[
    str, Meta(pattern=r"^[0-9a-f]{64}$(?!\n)", description="lowercase hex SHA-256")
]
# Kafka topic names allow only [A-Za-z0-9._-]; an identifier's ':' or '/' would
# pass here and fail later, when the worker creates its topics.
TopicPrefix = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]{1,64}$(?!\n)",
        description="1-64 characters from [A-Za-z0-9._-] (legal in Kafka topic names)",
    ),
]
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
#: The teams an exception (a dead letter) can be routed to.
Team = Literal["erp", "warehouse", "commerce", "returns", "finance"]
TEAMS: tuple[Team, ...] = ("erp", "warehouse", "commerce", "returns", "finance")
#: A glob over an event's ``source`` (``*``, ``?``, ``[...]``), matched case-sensitively.
SourcePattern = Annotated[
    str, Meta(min_length=1, max_length=256, description="a glob over the event's source")
]
FilePath = Annotated[str, Meta(min_length=1, description="the path of a file")]
UserName = Annotated[str, Meta(min_length=1, description="a non-empty user name")]


class Secret:
    """A password: shown as ``***`` everywhere; :meth:`reveal` gives the value."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        #: Where the value came from (a variable or a setting's file), safe to show.
        self.source = source

    def reveal(self) -> str:
        """The secret value itself, for the client that needs it; never print it."""
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))


class _Config(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Configuration tables reject unknown keys."""


class ChannelSettings(_Config, frozen=True):
    """A sales channel: the nodes it sells from, a buffer and the low-stock band."""

    name: Identifier
    nodes: Annotated[list[Identifier], Meta(min_length=1)]
    buffer: NonNegative = 0
    low_stock_threshold: NonNegative = 0
    #: What the availability feed tells about this channel: a change of status, of
    #: ``available``, or nothing.
    notify: Literal["status", "quantity", "off"] = "status"
    #: At most one feed message per (SKU, channel) per this many milliseconds; changes
    #: inside the interval are coalesced into one with the latest figures.
    notify_min_interval_ms: NonNegative = 1000


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
    #: Sustained requests per second for this token on the whole host (shared by the
    #: processes of ``stocksync api --processes N``); 0 means unlimited.
    rate: Annotated[float, Meta(ge=0)] = 0.0
    #: Bucket size; 0 means ``max(1, rate)``.
    burst: NonNegative = 0


class HoldSettings(_Config, frozen=True):
    """Checkout holds (``[api.holds]``)."""

    #: Time to live of a hold whose request names none.
    default_ttl_seconds: Positive = 900
    #: Longest time to live a request may ask for.
    max_ttl_seconds: Positive = 86_400
    #: Most lines one hold may have.
    max_lines: Positive = 100


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
    #: Seconds a client has to send a request's line and headers, from its first byte
    #: (or from connecting); then it gets 408 and the connection is closed.
    header_timeout_s: Seconds = 10.0
    #: Seconds a client has to send a whole request body once its headers are in.
    body_timeout_s: Seconds = 10.0
    #: Seconds an idle keep-alive connection is kept open between requests.
    idle_timeout_s: Seconds = 75.0
    #: Open connections one API process serves at once; one more is refused with 503.
    max_connections: Positive = 1000
    #: Bytes of request bodies one process holds at once beyond the first 64 KiB of each;
    #: an upload that would go over is refused with 503 (so uploads cannot fill memory).
    max_buffered_body_bytes: Positive = 16_777_216
    #: Failed authentications per second each client address may make (sustained), and
    #: how many at once; past that its requests get 429 rate_limited.
    auth_failure_rate: Annotated[float, Meta(gt=0)] = 1.0
    auth_failure_burst: Positive = 20
    #: Seconds a stopping API gives in-flight requests, and the supervisor its processes.
    shutdown_timeout_s: Seconds = 10.0
    tokens: list[TokenSettings] = msgspec.field(default_factory=list)
    holds: HoldSettings = msgspec.field(default_factory=HoldSettings)


class WorkerSettings(_Config, frozen=True):
    """The stream processor."""

    #: Address of the worker's own /healthz, /readyz, /metrics; port 0 picks a free one.
    host: str = "127.0.0.1"
    port: Port = 8081
    #: Most messages an agent takes per batch (translators also send effects every this
    #: many events), and how long to wait for a batch to fill.
    batch_size: Positive = 2000
    batch_window_ms: Positive = 50
    #: How long the applier waits for its batch to fill. Each effects message already
    #: carries a translator chunk, so a longer wait only adds age, not throughput
    #: (benchmarks/README.md, "Figures behind design choices").
    apply_window_ms: Positive = 10
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
    #: Largest message the worker sends when the broker does not say (its
    #: ``message.max.bytes``, asked at start, wins; so does a smaller producer limit).
    #: At least 128 KiB, so a truncated dead letter keeps the first 64 KiB of its value.
    max_message_bytes: Annotated[int, Meta(ge=131_072)] = 1_000_000


class ProbeSettings(_Config, frozen=True):
    """The synthetic probe (``[probe]``): its reserved SKU, where it looks, its SLOs."""

    #: The SKU only the probe writes. Counts of business SKUs and the feed leave it out:
    #: ask :func:`is_probe_sku`, never compare with this field yourself.
    sku: Identifier = "_stocksync-probe"
    #: The channel it reads and holds on, and the node it counts stock at; default: the
    #: first configured channel and that channel's first node.
    channel: Identifier | None = None
    node: Identifier | None = None
    #: The API it checks, e.g. ``http://api-1:8080``; default: ``api.host`` and ``api.port``
    #: (or the running dev setup's API).
    api_url: str | None = None
    #: Most seconds from sending the event to the API serving its new version.
    slo_seconds: Annotated[float, Meta(gt=0)] = 2.0
    #: Most seconds from asking for a hold (or its release) to the API serving it.
    hold_slo_seconds: Annotated[float, Meta(gt=0)] = 1.0
    #: Whether a probe also takes a hold of one unit and releases it.
    holds: bool = True
    #: A file holding an API token (one line) with ``holds:write`` when tokens are configured.
    token_file: FilePath | None = None
    #: Address of ``stocksync probe --every``'s own ``/metrics``.
    host: str = "127.0.0.1"
    port: Port = 9464


Status = Literal["in_stock", "low_stock", "out_of_stock"]


class WebhookSettings(_Config, frozen=True):
    """An HTTP endpoint the feed POSTs its messages to (``[[feed.webhooks]]``)."""

    name: Identifier
    #: http(s), without credentials in it (the loader refuses anything else).
    url: Annotated[str, Meta(min_length=1)]
    #: A file holding the HMAC secret (one line); read by the loader into ``secret``.
    secret_file: FilePath
    #: Channels whose messages go to it (default: all).
    channels: list[Identifier] | None = None
    #: Statuses whose messages go to it (default: all).
    statuses: list[Status] | None = None
    #: Deliveries tried before the messages go to the feed's dead-letter topic.
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 12
    #: Set by the loader from ``secret_file``; not a TOML key.
    secret: Secret | None = None


class FeedSettings(_Config, frozen=True):
    """The availability feed (``stocksync feed``)."""

    #: Address of the feed's own /healthz, /readyz, /metrics; port 0 picks a free one.
    host: str = "127.0.0.1"
    port: Port = 8082
    #: Seconds the active feed's lease lasts without renewal (a standby takes over after).
    lease_seconds: Annotated[float, Meta(ge=1, le=60)] = 5.0
    #: First retry delay of a failed webhook delivery (doubles each attempt, with jitter).
    retry_base_ms: Positive = 500
    #: Longest delay between two attempts of a webhook delivery.
    retry_max_ms: Positive = 60_000
    webhooks: list[WebhookSettings] = msgspec.field(default_factory=list)


class TopicOwnerSettings(_Config, frozen=True):
    """Who owns a dead letter of each source topic when no ``[dlq.owners]`` pattern matches."""

    #: Stock snapshots and adjustments: the ERP (a WMS is routed by a pattern on its source).
    stock: Team = "erp"
    #: Order events from the shop and the OMS.
    orders: Team = "commerce"
    #: Return events from the returns platform.
    returns: Team = "returns"


class DlqSettings(_Config, frozen=True):
    """Who owns the exceptions: a team for every dead letter (``[dlq]``)."""

    #: ``source`` glob -> team, e.g. ``"wms-*" = "warehouse"``; the first pattern (in file
    #: order) that matches the event's ``source`` wins.
    owners: dict[SourcePattern, Team] = msgspec.field(default_factory=dict)
    #: The owner by source topic when no pattern matches, or the event has no readable
    #: ``source`` (it was not JSON, say).
    default_owners: TopicOwnerSettings = msgspec.field(default_factory=TopicOwnerSettings)


class KafkaSecuritySettings(_Config, frozen=True):
    """How the Kafka clients authenticate and encrypt; PLAINTEXT does neither."""

    security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    #: Required with SASL_PLAINTEXT and SASL_SSL, as are ``username`` and a password.
    sasl_mechanism: SaslMechanism | None = None
    username: UserName | None = None
    #: A file holding the SASL password (one line); ``STOCKSYNC_KAFKA_PASSWORD`` wins.
    password_file: FilePath | None = None
    #: TLS (SSL, SASL_SSL): the CA bundle (else the system's), a client certificate and key.
    ssl_cafile: FilePath | None = None
    ssl_certfile: FilePath | None = None
    ssl_keyfile: FilePath | None = None
    ssl_check_hostname: bool = True
    #: Set by the loader from ``STOCKSYNC_KAFKA_PASSWORD`` or ``password_file``; not a TOML key.
    password: Secret | None = None


class RedisSecuritySettings(_Config, frozen=True):
    """How the Redis clients authenticate; TLS itself is chosen by a ``rediss://`` URL."""

    #: An ACL user; without it the password is the ``default`` user's.
    username: UserName | None = None
    #: A file holding the password (one line); ``STOCKSYNC_REDIS_PASSWORD`` wins.
    password_file: FilePath | None = None
    #: TLS (``rediss://`` only): the CA bundle (else the system's), a client certificate and key.
    ssl_cafile: FilePath | None = None
    ssl_certfile: FilePath | None = None
    ssl_keyfile: FilePath | None = None
    ssl_check_hostname: bool = True
    #: Set by the loader from ``STOCKSYNC_REDIS_PASSWORD`` or ``password_file``; not a TOML key.
    password: Secret | None = None


class Settings(_Config, frozen=True):
    """Everything stocksync is configured with."""

    #: Kafka bootstrap, ``kafka://host:port[;host:port]`` (the loader also takes a bare
    #: ``host:port`` and stores it in this form).
    broker: str = "kafka://127.0.0.1:9092"
    #: A password in the URL works but is discouraged (check-config warns): use
    #: ``redis.password_file`` or ``STOCKSYNC_REDIS_PASSWORD``.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: ``redis_url`` names one node of a Redis Cluster; the client finds the others.
    redis_cluster: bool = False
    #: Replicas that must acknowledge every write of the worker and of checkout holds
    #: (Redis ``WAIT``) before it counts as done; 0: the master's answer is enough. With
    #: a replica (per master, on a cluster), 1 keeps every acknowledged write across a
    #: failover.
    redis_wait_replicas: Annotated[int, Meta(ge=0, le=16)] = 0
    #: How long a write waits for those acknowledgements before it is retried.
    redis_wait_timeout_ms: Annotated[int, Meta(ge=10, le=60_000)] = 1000
    #: Topics are ``{topic_prefix}.stock.v1``, ``.orders.v1``, ``.returns.v1``, ``.dlq``,
    #: ``.effects.v1``.
    topic_prefix: TopicPrefix = "stocksync"
    #: Partitions of topics stocksync creates (effects, and missing source topics, dlq).
    partitions: Annotated[int, Meta(ge=1, le=1024)] = 8
    #: Prefix of every Redis key; the loader makes it ``topic_prefix`` unless it is set.
    redis_namespace: Identifier = "stocksync"
    channels: list[ChannelSettings] = msgspec.field(
        default_factory=lambda: [
            ChannelSettings(name="web", nodes=["dc-east", "dc-west"], low_stock_threshold=5)
        ]
    )
    nodes: dict[Identifier, NodeSettings] = msgspec.field(default_factory=dict)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    worker: WorkerSettings = msgspec.field(default_factory=WorkerSettings)
    feed: FeedSettings = msgspec.field(default_factory=FeedSettings)
    kafka: KafkaSecuritySettings = msgspec.field(default_factory=KafkaSecuritySettings)
    redis: RedisSecuritySettings = msgspec.field(default_factory=RedisSecuritySettings)
    probe: ProbeSettings = msgspec.field(default_factory=ProbeSettings)
    dlq: DlqSettings = msgspec.field(default_factory=DlqSettings)


def is_probe_sku(settings: Settings, sku: str) -> bool:
    """Whether ``sku`` is the probe's reserved SKU: not business stock, never counted or fed."""
    return sku == settings.probe.sku
