"""Topic names, their creation at start, and the fixed SKU -> effects partition hash.

Exceptions::

    TopicSetupError          topics could not be listed or created
     └── BrokerUnavailable   no broker answered at the bootstrap address

Topics are created before any Kafka client of the app touches them: a broker
with ``auto.create.topics.enable`` (Tansu always) creates a topic the moment a
Metadata request names it, with the broker's default partition count, and the
effects topic must have exactly ``settings.partitions`` partitions. So existing
topics are found by listing all topics, never by naming the missing ones.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Iterable
from typing import Any, NamedTuple

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError

from stocksync.config.connections import kafka_client_options
from stocksync.config.loader import bootstrap_servers
from stocksync.config.settings import Settings
from stocksync.errors import StocksyncError

__all__ = [
    "BrokerUnavailable",
    "TopicNames",
    "TopicSetupError",
    "effects_partition",
    "ensure_topics",
    "message_limit",
    "topic_names",
]

log = logging.getLogger("stocksync.topics")

# Kafka error codes the creation step expects.
_TOPIC_ALREADY_EXISTS = 36
# Most replicas asked for a topic stocksync creates; fewer on a smaller cluster.
_MAX_REPLICATION = 3


class TopicSetupError(StocksyncError):
    """The topics stocksync needs could not be listed or created."""


class BrokerUnavailable(TopicSetupError):
    """No Kafka broker answered at the bootstrap address."""


class TopicNames(NamedTuple):
    """The five topics of one deployment, named from ``settings.topic_prefix``."""

    stock: str
    orders: str
    returns: str
    effects: str
    dlq: str

    @property
    def sources(self) -> tuple[str, str, str]:
        """The topics other systems produce to (used as they are)."""
        return (self.stock, self.orders, self.returns)

    @property
    def owned(self) -> tuple[str, str]:
        """The topics stocksync produces to."""
        return (self.effects, self.dlq)


def topic_names(settings: Settings) -> TopicNames:
    """Return the topic names for ``settings.topic_prefix``."""
    prefix = settings.topic_prefix
    return TopicNames(
        stock=f"{prefix}.stock.v1",
        orders=f"{prefix}.orders.v1",
        returns=f"{prefix}.returns.v1",
        effects=f"{prefix}.effects.v1",
        dlq=f"{prefix}.dlq",
    )


def effects_partition(sku: str, partitions: int) -> int:
    """Return the effects partition of ``sku``: CRC-32 of its UTF-8 bytes modulo ``partitions``.

    This is the one SKU -> partition mapping every process uses, so all effects
    of a SKU reach the same applier. It is ``zlib.crc32(sku.encode("utf-8")) %
    partitions`` (CRC-32/ISO-HDLC, the unsigned 32-bit value, as in gzip and PNG),
    stable across processes, Python versions and languages, unlike ``hash()``.
    Changing it, or the effects topic's partition count, moves SKUs between
    appliers: drain the effects topic first.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions!r}")
    return zlib.crc32(sku.encode("utf-8")) % partitions


def _partition_counts(described: list[Any]) -> dict[str, int]:
    """Map topic name -> partition count from a Metadata answer's topic entries."""
    counts: dict[str, int] = {}
    for entry in described:
        if entry["error_code"] == 0:
            counts[entry["topic"]] = len(entry["partitions"])
    return counts


def _creation_errors(response: Any) -> dict[str, tuple[int, str | None]]:
    """Map topic name -> (error code, message) for the topics a CreateTopics call refused."""
    errors: dict[str, tuple[int, str | None]] = {}
    for item in response.topic_errors:
        name, code = item[0], item[1]
        message = item[2] if len(item) > 2 else None
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            errors[name] = (code, message)
    return errors


async def _ensure(
    admin: AIOKafkaAdminClient,
    names: TopicNames,
    partitions: int,
    replication_factor: int | None,
    created: list[str] | None,
) -> dict[str, int]:
    wanted = list(names)
    existing = set(await admin.list_topics())
    missing = [name for name in wanted if name not in existing]
    if missing:
        if replication_factor is None:
            cluster = await admin.describe_cluster()
            replication_factor = max(1, min(_MAX_REPLICATION, len(cluster["brokers"])))
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication_factor) for name in missing]
        )
        refused = _creation_errors(response)
        if refused:
            detail = "; ".join(f"{name!r}: error {c} {m or ''}" for name, (c, m) in refused.items())
            raise TopicSetupError(
                f"The broker refused to create {detail.strip()}. Create these topics by hand "
                f"with {partitions} partitions, or give stocksync the right to create topics."
            )
        if created is not None:
            created.extend(missing)
    # Every wanted topic exists now, so naming them cannot auto-create anything.
    counts = _partition_counts(await admin.describe_topics(wanted))
    absent = [name for name in wanted if name not in counts]
    if absent:
        raise TopicSetupError(f"Topics {absent!r} still do not exist after creating them.")
    return {name: counts[name] for name in wanted}


async def ensure_topics(
    bootstrap: str,
    settings: Settings,
    *,
    timeout: float = 30.0,
    replication_factor: int | None = None,
    created: list[str] | None = None,
) -> dict[str, int]:
    """Create the missing topics with ``settings.partitions`` partitions; return name -> count.

    The names of the topics it created are appended to ``created`` when given.

    Existing topics are used as they are, whatever their partition count (source
    topics belong to the systems that produce them). New topics get
    ``replication_factor`` replicas, by default as many brokers as the cluster
    has, at most 3. The effects topic's count decides how SKUs are spread (see
    :func:`effects_partition`), so read it from the result rather than from
    the settings.
    """
    names = topic_names(settings)
    servers = ",".join(bootstrap_servers(bootstrap))
    admin = AIOKafkaAdminClient(
        bootstrap_servers=servers,
        client_id="stocksync-topics",
        request_timeout_ms=max(1000, int(timeout * 1000)),
        **kafka_client_options(settings),
    )
    try:
        async with asyncio.timeout(timeout):
            try:
                await admin.start()
            except KafkaConnectionError as exc:
                raise BrokerUnavailable(
                    f"No Kafka broker answered at {servers!r} ({exc}). Start the broker, or "
                    "fix the broker setting (STOCKSYNC_BROKER, kafka://host:port)."
                ) from exc
            return await _ensure(admin, names, settings.partitions, replication_factor, created)
    except TimeoutError as exc:
        raise BrokerUnavailable(
            f"The Kafka broker at {servers!r} did not finish setting up topics within "
            f"{timeout:.0f} s. Check that it is up and reachable from here."
        ) from exc
    except KafkaError as exc:
        raise TopicSetupError(
            f"Setting up topics {list(names)!r} on {servers!r} failed: {exc!r}."
        ) from exc
    finally:
        await admin.close()


#: The topic setting that bounds a message (record batch), and the broker's default of it.
_TOPIC_LIMIT = "max.message.bytes"
_BROKER_LIMIT = "message.max.bytes"


def _config_values(responses: Iterable[Any], name: str) -> list[int]:
    """The integer values of config ``name`` in DescribeConfigs answers (errors skipped)."""
    values: list[int] = []
    for response in responses:
        for resource in response.resources:
            if resource[0] != 0:  # error_code
                continue
            for entry in resource[4]:  # config_entries: (name, value, ...)
                if entry[0] == name and entry[1] is not None:
                    try:
                        values.append(int(entry[1]))
                    except ValueError:
                        continue
    return values


async def _describe_limit(admin: AIOKafkaAdminClient, topics: list[str]) -> int | None:
    # All entries: a filter by name makes some brokers (Tansu) drop the connection.
    topic_answers = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics]
    )
    found = _config_values(topic_answers, _TOPIC_LIMIT)
    if found:
        return min(found)
    cluster = await admin.describe_cluster()
    broker_answers = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.BROKER, str(b["node_id"])) for b in cluster["brokers"]]
    )
    found = _config_values(broker_answers, _BROKER_LIMIT)
    return min(found) if found else None


async def message_limit(settings: Settings, topics: Iterable[str], *, timeout: float = 10.0) -> int:
    """The largest message the broker takes on ``topics`` (bytes), asked with DescribeConfigs.

    The smallest ``max.message.bytes`` of the topics, else the brokers'
    ``message.max.bytes``; when the broker does not say (Tansu answers with no
    entries) or cannot be asked, ``settings.worker.max_message_bytes``, and the
    log says so once.
    """
    fallback = settings.worker.max_message_bytes
    names = list(topics)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(settings.broker),
        client_id="stocksync-topics",
        request_timeout_ms=max(1000, int(timeout * 1000)),
        **kafka_client_options(settings),
    )
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            limit = await _describe_limit(admin, names)
    except (KafkaError, TimeoutError, OSError) as exc:
        log.warning(
            "could not ask the broker for its message size limit (%r); assuming "
            "worker.max_message_bytes = %d",
            exc,
            fallback,
        )
        return fallback
    finally:
        await admin.close()
    if limit is None:
        log.info(
            "the broker does not report %s or %s; assuming worker.max_message_bytes = %d",
            _TOPIC_LIMIT,
            _BROKER_LIMIT,
            fallback,
        )
        return fallback
    log.info("the broker takes messages of up to %d bytes on %s", limit, ", ".join(names))
    return limit
