"""Client options for secure Kafka and Redis connections, built from the settings.

Every Kafka and Redis client of stocksync takes its security options from here,
so one ``[kafka]`` / ``[redis]`` table configures them all. The defaults
(PLAINTEXT Kafka, a ``redis://`` URL without a password) give empty options: the
clients behave exactly as without this module.

Passwords reach the settings only as :class:`~stocksync.config.settings.Secret`
(resolved by the loader from ``STOCKSYNC_KAFKA_PASSWORD`` /
``STOCKSYNC_REDIS_PASSWORD`` or a ``password_file``); the builders below are the
only callers of ``reveal()``, and their results go straight into a client
constructor, never into a log line. :func:`security_summary` says what is
configured, and whether a password is set, never which.

aiokafka and Faust are imported only when their options are built, so
``check-config`` does not pay for Faust.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from stocksync.config.settings import (
    KafkaSecuritySettings,
    RedisSecuritySettings,
    Secret,
    Settings,
)

__all__ = [
    "faust_broker_credentials",
    "kafka_client_options",
    "kafka_ssl_context",
    "redis_client_options",
    "security_summary",
    "security_warnings",
]

_KAFKA_TLS = frozenset({"SSL", "SASL_SSL"})
_KAFKA_SASL = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the Kafka clients, or None when the protocol does not use TLS."""
    kafka = settings.kafka
    if kafka.security_protocol not in _KAFKA_TLS:
        return None
    from aiokafka.helpers import create_ssl_context

    context: ssl.SSLContext = create_ssl_context(
        cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
    )
    context.check_hostname = kafka.ssl_check_hostname
    return context


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments (producer, consumer, admin) for ``settings.kafka``."""
    kafka = settings.kafka
    if kafka.security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol in _KAFKA_SASL:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.username
        options["sasl_plain_password"] = _reveal(kafka.password)
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    return options


def faust_broker_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for :class:`faust.App` (SASL or SSL credentials), or None."""
    kafka = settings.kafka
    if kafka.security_protocol == "PLAINTEXT":
        return None
    import faust

    context = kafka_ssl_context(settings)
    if kafka.security_protocol in _KAFKA_SASL:
        # With a context Faust speaks SASL_SSL, without one SASL_PLAINTEXT.
        return faust.SASLCredentials(
            username=kafka.username,
            password=_reveal(kafka.password),
            ssl_context=context,
            mechanism=kafka.sasl_mechanism,
        )
    return faust.SSLCredentials(context)


def redis_client_options(settings: Settings) -> dict[str, Any]:
    """redis-py keyword arguments for ``Redis.from_url(settings.redis_url, ...)``."""
    redis = settings.redis
    options: dict[str, Any] = {}
    if redis.username is not None:
        options["username"] = redis.username
    if redis.password is not None:
        options["password"] = redis.password.reveal()
    if urlsplit(settings.redis_url).scheme == "rediss":
        for option, value in (
            ("ssl_ca_certs", redis.ssl_cafile),
            ("ssl_certfile", redis.ssl_certfile),
            ("ssl_keyfile", redis.ssl_keyfile),
        ):
            if value is not None:
                options[option] = value
        options["ssl_check_hostname"] = redis.ssl_check_hostname
    return options


def security_summary(settings: Settings) -> list[tuple[str, str]]:
    """Rows for ``check-config``: how each connection is secured; passwords only as set/unset."""
    return [
        ("kafka security", _describe_kafka(settings.kafka)),
        ("redis security", _describe_redis(settings.redis, settings.redis_url)),
    ]


def security_warnings(settings: Settings) -> list[str]:
    """Valid but risky choices, one sentence each, for ``check-config``."""
    warnings = []
    if urlsplit(settings.redis_url).password is not None:
        warnings.append(
            "redis_url carries a password, which is easily shown or logged with the URL;"
            " move it to redis.password_file or STOCKSYNC_REDIS_PASSWORD"
        )
    if settings.redis_cluster and not settings.redis_wait_replicas:
        warnings.append(
            "redis_cluster without redis_wait_replicas: Redis replicates asynchronously,"
            " so a write acknowledged just before a failover can be missing on the promoted"
            " replica and is then lost; set redis_wait_replicas = 1 when masters have replicas"
        )
    kafka = settings.kafka
    if kafka.security_protocol == "SASL_PLAINTEXT" and kafka.sasl_mechanism == "PLAIN":
        warnings.append(
            "SASL PLAIN over SASL_PLAINTEXT sends the Kafka password unencrypted;"
            " use SASL_SSL or a SCRAM mechanism"
        )
    return warnings


def _reveal(secret: Secret | None) -> str:
    if secret is None:  # the loader refuses SASL without a password
        raise ValueError("the Kafka SASL password is not set")
    return secret.reveal()


def _password(secret: Secret | None) -> str:
    return "no password" if secret is None else f"password set (from {secret.source})"


def _tls(settings: KafkaSecuritySettings | RedisSecuritySettings) -> str:
    return "; ".join(
        [
            f"TLS with CA {settings.ssl_cafile or 'of the system'}",
            f"client certificate {settings.ssl_certfile}"
            if settings.ssl_certfile
            else "no client certificate",
            "hostname checked" if settings.ssl_check_hostname else "hostname NOT checked",
        ]
    )


def _describe_kafka(kafka: KafkaSecuritySettings) -> str:
    protocol = kafka.security_protocol
    parts: list[str] = [protocol]
    if protocol in _KAFKA_SASL:
        parts.append(
            f"SASL {kafka.sasl_mechanism} as {kafka.username!r}, {_password(kafka.password)}"
        )
    else:
        parts.append("no authentication")
    parts.append(_tls(kafka) if protocol in _KAFKA_TLS else "no TLS")
    return "; ".join(parts)


def _describe_redis(redis: RedisSecuritySettings, url: str) -> str:
    parts = urlsplit(url)
    user = redis.username or parts.username
    if redis.password is not None:
        auth = _password(redis.password)
    elif parts.password is not None:
        auth = "password in redis_url"
    else:
        auth = "no password"
    if user:
        auth = f"user {user!r}, {auth}"
    return "; ".join([auth, _tls(redis) if parts.scheme == "rediss" else "no TLS"])
