"""Build the one validated :class:`Settings` from a TOML file and ``STOCKSYNC_*`` variables.

Exceptions::

    Exception
    └── ConfigError    any problem with the configuration, as one line of text

Every message names the field (``api.port``, ``channels[1].low_stock_threshold``,
``nodes.dc-east.safety_stock``) or, when an environment variable set the value,
that variable (``STOCKSYNC_API_PORT``), shows the bad value with ``!r`` and says
what to do. The program stops on the first problem; it never starts half-configured.

Passwords for Kafka (SASL) and Redis come from ``STOCKSYNC_KAFKA_PASSWORD`` /
``STOCKSYNC_REDIS_PASSWORD`` in ``env``, else from the file named by
``kafka.password_file`` / ``redis.password_file``, read here once; they land on the
settings as a :class:`~stocksync.config.settings.Secret`, which prints as ``***``.
A ``password`` key in the TOML is refused, and no message ever shows a password.

Given the running ``stocksync dev`` setup (:mod:`stocksync.config.devsetup`),
a configuration that names no broker and no Redis (nor their security tables)
gets that setup's broker, Redis, key space and topic prefix.
"""

from __future__ import annotations

import os
import re
import ssl
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from stocksync.config.addresses import BROKER_FORM, parse_broker, redacted_url
from stocksync.config.devsetup import DevSetup
from stocksync.config.settings import (
    FeedSettings,
    KafkaSecuritySettings,
    RedisSecuritySettings,
    Secret,
    Settings,
)
from stocksync.errors import StocksyncError

__all__ = [
    "CONFIG_ENV",
    "ENV_OVERRIDES",
    "SECRET_ENV",
    "ConfigError",
    "bootstrap_servers",
    "config_path",
    "load_configuration",
    "load_settings",
]

#: The variable naming the configuration file when ``--config`` is not given.
CONFIG_ENV: Final = "STOCKSYNC_CONFIG"

#: Environment variables that override one setting each, with the setting they set.
ENV_OVERRIDES: Final[Mapping[str, str]] = {
    "STOCKSYNC_BROKER": "broker",
    "STOCKSYNC_REDIS_URL": "redis_url",
    "STOCKSYNC_REDIS_CLUSTER": "redis_cluster",
    "STOCKSYNC_REDIS_WAIT_REPLICAS": "redis_wait_replicas",
    "STOCKSYNC_TOPIC_PREFIX": "topic_prefix",
    "STOCKSYNC_REDIS_NAMESPACE": "redis_namespace",
    "STOCKSYNC_PARTITIONS": "partitions",
    "STOCKSYNC_API_HOST": "api.host",
    "STOCKSYNC_API_PORT": "api.port",
    "STOCKSYNC_WORKER_HOST": "worker.host",
    "STOCKSYNC_WORKER_PORT": "worker.port",
    "STOCKSYNC_PROBE_API_URL": "probe.api_url",
    "STOCKSYNC_FEED_HOST": "feed.host",
    "STOCKSYNC_FEED_PORT": "feed.port",
}
#: Environment variables holding a password, with the table whose password they are.
SECRET_ENV: Final[Mapping[str, str]] = {
    "STOCKSYNC_KAFKA_PASSWORD": "kafka",
    "STOCKSYNC_REDIS_PASSWORD": "redis",
}
_INT_OVERRIDES: Final = frozenset(
    {"STOCKSYNC_PARTITIONS", "STOCKSYNC_API_PORT", "STOCKSYNC_WORKER_PORT", "STOCKSYNC_FEED_PORT",
     "STOCKSYNC_REDIS_WAIT_REPLICAS"}
)

#: Variables holding a flag, and the spellings taken for it (others are refused by name).
_BOOL_OVERRIDES: Final = frozenset({"STOCKSYNC_REDIS_CLUSTER"})
_BOOL_TEXT: Final[Mapping[str, bool]] = {
    "1": True, "true": True, "yes": True, "on": True,
    "0": False, "false": False, "no": False, "off": False,
}

_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
_TOML_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MSGSPEC_ERROR = re.compile(
    r"^(?P<text>.*?)(?: - at `(?P<path>[^`]*)`(?: in `(?P<within>[^`]*)`)?)?$"
)
_PATH_PART = re.compile(r"\.(?P<name>[^.\[]+)|\[(?P<index>[0-9]+)\]|\[(?P<any>\.\.\.)\]")
_MAX_SHOWN = 120

Path = tuple[str | int, ...]


class ConfigError(StocksyncError):
    """The configuration is missing, unreadable or invalid; the message is one line."""

    def __init__(self, message: str) -> None:
        # Only line breaks go: other whitespace may be part of a value shown with !r.
        super().__init__(" ".join(message.splitlines()))


def config_path(path: str | None, env: Mapping[str, str]) -> str | None:
    """The configuration file to read: ``path`` (``--config``), else ``STOCKSYNC_CONFIG``."""
    if path is not None:
        if not path:
            raise ConfigError("--config is empty; give the path of a TOML file")
        return path
    from_env = env.get(CONFIG_ENV)
    if from_env is None:
        return None
    if not from_env:
        raise ConfigError(
            f"{CONFIG_ENV} is set but empty; set it to the path of a TOML file or unset it"
        )
    return from_env


def load_settings(path: str | None, env: Mapping[str, str]) -> Settings:
    """Read, override from ``env`` and validate the settings; raise :class:`ConfigError`."""
    return load_configuration(path, env)[0]


#: Settings that point at a deployment: with any of them, a running dev setup is not used.
_CONNECTION_KEYS: Final = frozenset({"broker", "redis_url", "kafka", "redis"})


def load_configuration(
    path: str | None, env: Mapping[str, str], dev: DevSetup | None = None
) -> tuple[Settings, DevSetup | None]:
    """The settings, and ``dev`` when they came to use that running dev setup.

    Without broker and Redis settings (from the file or ``env``), ``dev``'s
    broker, Redis URL, key space and topic prefix are taken.
    """
    file = config_path(path, env)
    origin = "--config" if path is not None else CONFIG_ENV
    raw: dict[str, Any] = {} if file is None else _read_toml(file, origin)
    overridden = _apply_env(raw, env)
    used = dev if dev is not None and not (_CONNECTION_KEYS & raw.keys()) else None
    if used is not None:
        raw.update(
            broker=used.broker,
            redis_url=used.redis_url,
            redis_namespace=used.redis_namespace,
            topic_prefix=used.topic_prefix,
        )
    context = _Context(file, overridden, env, namespace_set="redis_namespace" in raw)
    _refuse_inline_passwords(raw, context)
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        raise context.from_validation(str(exc), raw) from None
    return _check(settings, context), used


def bootstrap_servers(broker: str) -> list[str]:
    """The ``host:port`` addresses of a Kafka broker setting (``settings.broker``), for aiokafka."""
    servers = parse_broker(broker)
    if servers is None:  # the loader already refused such a setting
        raise ConfigError(f"broker = {broker!r} is invalid: expected {BROKER_FORM}")
    return servers


# --- reading ---------------------------------------------------------------------


def _read_toml(file: str, origin: str) -> dict[str, Any]:
    where = f"configuration file {file!r} (from {origin})"
    try:
        with open(file, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist; check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a directory; give the path of a TOML file") from None
    except OSError as exc:
        raise ConfigError(
            f"{where} cannot be read: {exc.strerror}; check its permissions"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}; fix the syntax there") from None


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[Path, str]:
    """Put the ``STOCKSYNC_*`` overrides into ``raw``; return which path each one set."""
    overridden: dict[Path, str] = {}
    for name, dotted in ENV_OVERRIDES.items():
        text = env.get(name)
        if text is None:
            continue
        value: str | int | bool = text
        if name in _INT_OVERRIDES and text.isascii() and text.isdigit():
            value = int(text)
        elif name in _BOOL_OVERRIDES and text.strip().lower() in _BOOL_TEXT:
            value = _BOOL_TEXT[text.strip().lower()]
        *parents, leaf = dotted.split(".")
        table: Any = raw
        for part in parents:
            table = table.setdefault(part, {}) if isinstance(table, dict) else None
        if isinstance(table, dict):  # else validation reports the table that is not one
            table[leaf] = value
            overridden[(*parents, leaf)] = name
    return overridden


# --- checks msgspec cannot express -------------------------------------------------


def _check(settings: Settings, context: _Context) -> Settings:
    """Refuse what the types cannot say; return the settings with the broker as a kafka:// URL."""
    servers = parse_broker(settings.broker)
    if servers is None:
        raise context.invalid(("broker",), settings.broker, f"expected {BROKER_FORM}")
    problem = _redis_url_problem(settings.redis_url)
    if problem:
        shown = _show(redacted_url(settings.redis_url))
        raise context.invalid(("redis_url",), settings.redis_url, problem, shown=shown)
    if settings.redis_cluster and urlsplit(settings.redis_url).scheme == "unix":
        raise context.invalid(
            ("redis_url",), settings.redis_url,
            "a Redis Cluster is reached over TCP, not a unix socket (redis_cluster = true)",
            shown=_show(redacted_url(settings.redis_url)),
        )
    if settings.redis_cluster and urlsplit(settings.redis_url).path not in ("", "/", "/0"):
        raise context.invalid(
            ("redis_url",), settings.redis_url,
            "a Redis Cluster has only database 0 (redis_cluster = true)",
            shown=_show(redacted_url(settings.redis_url)),
        )

    if not settings.channels:
        raise context.invalid(("channels",), [], "expected at least one channel", "add one")
    first_channel: dict[str, int] = {}
    for i, channel in enumerate(settings.channels):
        if channel.name in first_channel:
            raise context.duplicate(
                ("channels", i, "name"), channel.name, first_channel[channel.name]
            )
        first_channel[channel.name] = i
        seen: dict[str, int] = {}
        for j, node in enumerate(channel.nodes):
            if node in seen:
                raise context.invalid(
                    ("channels", i, "nodes", j),
                    node,
                    f"channels[{i}].nodes[{seen[node]}] lists it already, and counting a node"
                    " twice would double its stock",
                    "list each node once",
                )
            seen[node] = j
    _check_probe(settings, context)
    for field in ("name", "sha256"):
        first_token: dict[str, int] = {}
        for i, token in enumerate(settings.api.tokens):
            value = getattr(token, field)
            if value in first_token:
                raise context.duplicate(("api", "tokens", i, field), value, first_token[value])
            first_token[value] = i
    feed = _check_feed(settings.feed, list(first_channel), context)
    return msgspec.structs.replace(
        settings,
        # Unless set, the Redis key space follows the topic prefix: deployments that share a
        # Redis but not topics never see each other's model.
        redis_namespace=settings.redis_namespace
        if context.namespace_set
        else settings.topic_prefix,
        broker="kafka://" + ";".join(servers),
        kafka=_check_kafka(settings.kafka, context),
        redis=_check_redis(settings.redis, settings.redis_url, context),
        feed=feed,
    )


def _check_probe(settings: Settings, context: _Context) -> None:
    """The probe's channel must be configured, and its node one of that channel's."""
    probe = settings.probe
    names = [c.name for c in settings.channels]
    if probe.channel is not None and probe.channel not in names:
        raise context.invalid(
            ("probe", "channel"), probe.channel, f"no channel has that name (known: {names})"
        )
    channel = next(c for c in settings.channels if c.name == (probe.channel or names[0]))
    if probe.node is not None and probe.node not in channel.nodes:
        raise context.invalid(
            ("probe", "node"),
            probe.node,
            f"channel {channel.name!r} has no such node (its nodes: {channel.nodes})",
        )
    if probe.api_url is not None and urlsplit(probe.api_url).scheme not in ("http", "https"):
        raise context.invalid(
            ("probe", "api_url"), probe.api_url, "expected an http:// or https:// URL"
        )


def _check_feed(feed: FeedSettings, channels: list[str], context: _Context) -> FeedSettings:
    """Webhooks: unique names, plain http(s) URLs, known channels; read their secrets."""
    if feed.retry_max_ms < feed.retry_base_ms:
        raise context.invalid(
            ("feed", "retry_max_ms"), feed.retry_max_ms,
            f"it is below feed.retry_base_ms = {feed.retry_base_ms}", "raise it",
        )
    first: dict[str, int] = {}
    hooks = []
    for i, hook in enumerate(feed.webhooks):
        if hook.name in first:
            raise context.duplicate(("feed", "webhooks", i, "name"), hook.name, first[hook.name])
        first[hook.name] = i
        path: Path = ("feed", "webhooks", i, "url")
        parts = urlsplit(hook.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise context.invalid(
                path, hook.url, "expected an http:// or https:// URL with a host",
                "give the endpoint's URL",
            )
        if parts.username is not None or parts.password is not None:
            raise context.invalid(
                path, hook.url, "it has credentials in it",
                "remove them: deliveries are signed with the secret of secret_file",
                shown=_show(redacted_url(hook.url)),
            )
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise context.invalid(
                path, hook.url, "the port is not a number from 1 to 65535"
            ) from None
        for j, channel in enumerate(hook.channels or ()):
            if channel not in channels:
                raise context.invalid(
                    ("feed", "webhooks", i, "channels", j), channel,
                    f"no such channel (configured: {', '.join(channels)})", "fix the name",
                )
        secret_path: Path = ("feed", "webhooks", i, "secret_file")
        try:
            text = _readable(secret_path, hook.secret_file, context).decode("utf-8").strip()
        except UnicodeDecodeError:
            raise context.invalid(
                secret_path, hook.secret_file, "the file is not UTF-8 text", "save it as UTF-8"
            ) from None
        if not text:
            raise context.invalid(
                secret_path, hook.secret_file, "the file is empty", "write the secret into it"
            )
        source = f"{_dotted(secret_path)} {os.path.abspath(hook.secret_file)}"
        hooks.append(msgspec.structs.replace(hook, secret=Secret(text, source)))
    return msgspec.structs.replace(feed, webhooks=hooks)


# --- connection security -------------------------------------------------------------

_SASL: Final = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
_TLS: Final = frozenset({"SSL", "SASL_SSL"})
_TLS_FILES: Final = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")


def _refuse_inline_passwords(raw: dict[str, Any], context: _Context) -> None:
    """A ``password`` key in ``[kafka]`` or ``[redis]`` is an error that never shows it."""
    for variable, table in SECRET_ENV.items():
        section = raw.get(table)
        if isinstance(section, dict) and "password" in section:
            raise ConfigError(
                f"{table}.password is not a setting: a password never goes in the configuration"
                f" file; remove it {context.where} and put it in a file named by"
                f" {table}.password_file, or in {variable}"
            )
    feed = raw.get("feed")
    hooks = feed.get("webhooks") if isinstance(feed, dict) else None
    for i, hook in enumerate(hooks if isinstance(hooks, list) else ()):
        if isinstance(hook, dict) and "secret" in hook:
            raise ConfigError(
                f"feed.webhooks[{i}].secret is not a setting: a secret never goes in the"
                f" configuration file; remove it {context.where} and put it in a file named by"
                f" feed.webhooks[{i}].secret_file"
            )


def _check_kafka(kafka: KafkaSecuritySettings, context: _Context) -> KafkaSecuritySettings:
    """Cross-field checks of ``[kafka]``; return it with the SASL password resolved."""
    protocol = kafka.security_protocol
    variable = "STOCKSYNC_KAFKA_PASSWORD"
    if protocol in _SASL:
        for field, what in (
            ("sasl_mechanism", "one of 'PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512'"),
            ("username", "the SASL user name"),
        ):
            if getattr(kafka, field) is None:
                raise ConfigError(
                    f"kafka.{field} is missing: security_protocol = {protocol!r} needs {what};"
                    f" add it to [kafka] {context.where}"
                )
        password = _password("kafka", kafka.password_file, variable, context)
        if password is None:
            raise ConfigError(
                f"kafka.password_file is missing: security_protocol = {protocol!r} needs a"
                f" password; set {variable} or add password_file to [kafka] {context.where}"
            )
        kafka = msgspec.structs.replace(kafka, password=password)
    else:
        for field in ("sasl_mechanism", "username", "password_file"):
            value = getattr(kafka, field)
            if value is not None:
                raise context.invalid(
                    ("kafka", field),
                    value,
                    f"security_protocol = {protocol!r} does not authenticate",
                    "set kafka.security_protocol to 'SASL_SSL' or 'SASL_PLAINTEXT', or remove it",
                )
        if variable in context.env:
            raise ConfigError(
                f"{variable} is set but kafka.security_protocol = {protocol!r} does not"
                f" authenticate; unset {variable}, or set security_protocol to 'SASL_SSL' or"
                f" 'SASL_PLAINTEXT' {context.where}"
            )
    _check_tls_files(
        "kafka",
        kafka,
        protocol in _TLS,
        f"security_protocol = {protocol!r} does not use TLS",
        "set kafka.security_protocol to 'SSL' or 'SASL_SSL', or remove it",
        context,
    )
    return kafka


def _check_redis(
    redis: RedisSecuritySettings, url: str, context: _Context
) -> RedisSecuritySettings:
    """Cross-field checks of ``[redis]`` against ``redis_url``; resolve the password."""
    parts = urlsplit(url)
    _check_tls_files(
        "redis",
        redis,
        parts.scheme == "rediss",
        "redis_url does not use TLS",
        "use a rediss:// URL, or remove it",
        context,
    )
    variable = "STOCKSYNC_REDIS_PASSWORD"
    password = _password("redis", redis.password_file, variable, context)
    if password is not None and parts.password is not None:
        raise ConfigError(
            f"redis_url has a password and {password.source} gives one too; remove the one in"
            f" redis_url (a password in a URL is easily shown) {context.where}"
        )
    if redis.username is not None and parts.username:
        raise ConfigError(
            f"redis.username = {_show(redis.username)} and the user in redis_url both name a"
            f" Redis user; keep one {context.where}"
        )
    if redis.username is not None and password is None and parts.password is None:
        raise context.invalid(
            ("redis", "username"),
            redis.username,
            "a Redis user needs a password",
            f"set {variable} or redis.password_file, or remove it",
        )
    return redis if password is None else msgspec.structs.replace(redis, password=password)


def _check_tls_files(
    table: str,
    section: KafkaSecuritySettings | RedisSecuritySettings,
    tls: bool,
    unused: str,
    fix: str,
    context: _Context,
) -> None:
    """TLS files must be readable when TLS is on, and absent when it is off."""
    if not tls:
        for field in _TLS_FILES:
            value = getattr(section, field)
            if value is not None:
                raise context.invalid((table, field), value, unused, fix)
        if not section.ssl_check_hostname:
            raise context.invalid((table, "ssl_check_hostname"), False, unused, fix)
        return
    for field in _TLS_FILES:
        value = getattr(section, field)
        if value is not None:
            _readable((table, field), value, context)
    if section.ssl_keyfile is not None and section.ssl_certfile is None:
        raise context.invalid(
            (table, "ssl_keyfile"),
            section.ssl_keyfile,
            "a client key needs its certificate",
            f"add {table}.ssl_certfile, or remove it",
        )
    _check_tls_loads(table, section, context)


class _EncryptedKey(Exception):
    """The client key asked for a passphrase."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise _EncryptedKey


def _check_tls_loads(
    table: str, section: KafkaSecuritySettings | RedisSecuritySettings, context: _Context
) -> None:
    """Load the CA bundle and the client certificate and key once, as the clients will."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if section.ssl_cafile is not None:
        try:
            tls.load_verify_locations(cafile=section.ssl_cafile)
        except ssl.SSLError as exc:
            raise context.invalid(
                (table, "ssl_cafile"),
                section.ssl_cafile,
                f"it holds no PEM certificate{_reason(exc)}",
                "give a PEM CA bundle",
            ) from None
    if section.ssl_certfile is not None:
        key = "ssl_keyfile" if section.ssl_keyfile is not None else "ssl_certfile"
        try:
            tls.load_cert_chain(section.ssl_certfile, section.ssl_keyfile, _no_passphrase)
        except _EncryptedKey:
            raise context.invalid(
                (table, key),
                getattr(section, key),
                "the private key is encrypted",
                "give an unencrypted key and protect the file by its permissions",
            ) from None
        except ssl.SSLError as exc:
            raise context.invalid(
                (table, "ssl_certfile"),
                section.ssl_certfile,
                f"the certificate and key do not load together{_reason(exc)}",
                f"give a PEM certificate and its key (in it or in {table}.ssl_keyfile)",
            ) from None


def _reason(exc: ssl.SSLError) -> str:
    return f" ({exc.reason})" if exc.reason else ""


def _readable(path: Path, file: str, context: _Context) -> bytes:
    """The contents of ``file``, named by setting ``path``; ConfigError says why not."""
    try:
        with open(file, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise context.invalid(path, file, "the file does not exist", "check the path") from None
    except IsADirectoryError:
        raise context.invalid(path, file, "it is a directory", "give the path of a file") from None
    except OSError as exc:
        raise context.invalid(
            path, file, f"the file cannot be read ({exc.strerror})", "check its permissions"
        ) from None


def _password(table: str, file: str | None, variable: str, context: _Context) -> Secret | None:
    """The password from ``variable`` (it wins) or from ``file``; never shown in a message."""
    value = context.env.get(variable)
    if value is not None:
        if not value:
            raise ConfigError(f"{variable} is set but empty; set it to the password or unset it")
        return Secret(value, variable)
    if file is None:
        return None
    path = (table, "password_file")
    try:
        text = _readable(path, file, context).decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise context.invalid(
            path, file, "the file is not UTF-8 text", "save the password as UTF-8"
        ) from None
    if not text:
        raise context.invalid(path, file, "the file is empty", "write the password into it")
    return Secret(text, f"{_dotted(path)} {os.path.abspath(file)}")


def _redis_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in _REDIS_SCHEMES:
        return "expected a URL with scheme redis://, rediss:// or unix://"
    if parts.scheme == "unix":
        return None if parts.path else "expected unix:///path/to/redis.sock"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return "the port is not a number from 1 to 65535"
    if not parts.hostname:
        return f"expected {parts.scheme}://host[:port][/db]"
    if parts.path not in ("", "/") and not parts.path[1:].isdigit():
        return f"the database {parts.path[1:]!r} is not a number, e.g. /0"
    return None


# --- messages ---------------------------------------------------------------------


class _Context:
    """Knows where each value came from, to name the field or variable and say what to do."""

    def __init__(
        self,
        file: str | None,
        overridden: dict[Path, str],
        env: Mapping[str, str],
        *,
        namespace_set: bool = False,
    ):
        self.where = f"in {file}" if file else "in the configuration file"
        self.overridden = overridden
        self.env = env
        #: Whether the file or the environment chose ``redis_namespace``.
        self.namespace_set = namespace_set

    def invalid(
        self,
        path: Path,
        value: object,
        problem: str,
        fix: str | None = None,
        *,
        shown: str | None = None,
    ) -> ConfigError:
        """A bad value at ``path``, named by its variable when one set it (``shown`` as given)."""
        variable = self.overridden.get(path)
        if variable is not None:
            shown = shown or _show(self.env[variable])
            return ConfigError(
                f"{variable} = {shown} is invalid: {problem}; set {variable} to a valid value"
                " or unset it"
            )
        fix = f"{fix} {self.where}" if fix else f"change it {self.where}"
        shown = shown or _show(value)
        return ConfigError(f"{_dotted(path)} = {shown} is invalid: {problem}; {fix}")

    def duplicate(self, path: Path, value: object, first: int) -> ConfigError:
        """A value at ``path`` (``(..., index, field)``) that list entry ``first`` already has."""
        earlier = _dotted((*path[:-2], first, path[-1]))
        return self.invalid(path, value, f"{earlier} has it already", "make it unique")

    def from_validation(self, message: str, raw: dict[str, Any]) -> ConfigError:
        """Translate msgspec's error (``... - at `$.api.port```) into our one-line form."""
        match = _MSGSPEC_ERROR.match(message)
        assert match is not None  # the pattern matches any string
        text = match["text"]
        if match["within"] is not None:  # a bad key of a table: ``at `key` in `$.nodes```
            return self._bad_key(match["within"], raw) or self._unknown_shape(message)
        names = _split_path(match["path"] or "$")
        if names is None:
            return self._unknown_shape(message)
        path, types, value = _resolve(names, raw)
        here = _dotted(path) or "the top level"

        unknown = re.fullmatch(r"Object contains unknown field `(.+)`", text)
        if unknown:
            table = value if isinstance(value, dict) else {}
            known = ", ".join(_field_names(types[-1])) if types else "?"
            return ConfigError(
                f"{_dotted((*path, unknown[1]))} = {_show(table.get(unknown[1]))} is not a"
                f" setting; remove it or fix the spelling {self.where} (known in {here}: {known})"
            )
        missing = re.fullmatch(r"Object missing required field `(.+)`", text)
        if missing:
            return ConfigError(
                f"{_dotted((*path, missing[1]))} is missing; add it to {here} {self.where}"
            )
        expected = _expected(types[-1]) if types else None
        problem = f"expected {expected}" if expected else _plain(text)
        fix = _FIELD_HINTS.get(str(path[-1])) if path else None
        return self.invalid(path, value, problem, fix)

    def _bad_key(self, within: str, raw: dict[str, Any]) -> ConfigError | None:
        names = _split_path(within)
        if names is None:
            return None
        path, types, table = _resolve(names, raw)
        if not types or not isinstance(table, dict):
            return None
        key_type = typing.get_args(_strip(types[-1]))[0]
        key = next((k for k in table if not _converts(k, key_type)), None)
        return ConfigError(
            f"{_dotted(path)} has a bad key {_show(key)}: expected {_expected(key_type)};"
            f" rename it {self.where}"
        )

    def _unknown_shape(self, message: str) -> ConfigError:
        # An error shape this module does not know: keep msgspec's words.
        return ConfigError(f"{_plain(message)}; fix it {self.where}")


_FIELD_HINTS: Final[Mapping[str, str]] = {
    "sha256": "make one with `stocksync hash-token` and put it",
}


def _split_path(text: str) -> list[str | int | None] | None:
    """``$.a[1].b[...]`` as ``["a", 1, "b", None]`` (None: some key of a table)."""
    if not text.startswith("$"):
        return None
    parts: list[str | int | None] = []
    pos = 1
    while pos < len(text):
        step = _PATH_PART.match(text, pos)
        if step is None:
            return None
        if step["name"] is not None:
            parts.append(step["name"])
        elif step["index"] is not None:
            parts.append(int(step["index"]))
        else:
            parts.append(None)
        pos = step.end()
    return parts


def _resolve(names: list[str | int | None], raw: object) -> tuple[Path, list[Any], Any]:
    """Walk ``raw`` and the Settings types along ``names``; find the key of any ``[...]``.

    Returns the concrete path, the type at each step (empty if the walk lost the
    types) and the raw value at the end (``None`` if absent).
    """
    path: list[str | int] = []
    tp: Any = Settings
    types: list[Any] = [tp]
    value: Any = raw
    for name in names:
        tp = _child_type(tp, name)
        if name is None:  # msgspec does not say which key of the table failed: find it
            table = value if isinstance(value, dict) and tp is not None else {}
            name = next((k for k, v in table.items() if not _converts(v, tp)), "...")
        path.append(name)
        if isinstance(name, int):
            value = value[name] if isinstance(value, list) and name < len(value) else None
        else:
            value = value.get(name) if isinstance(value, dict) else None
        types.append(tp)
    return tuple(path), types if tp is not None else [], value


def _child_type(tp: Any, name: str | int | None) -> Any:
    tp = _strip(tp)
    if tp is None:
        return None
    if isinstance(name, str) and isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return typing.get_type_hints(tp, include_extras=True).get(name)
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if isinstance(name, int) and origin is list:
        return args[0]
    if name is None and origin is dict:
        return args[1]
    return None


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _converts(value: object, tp: Any) -> bool:
    try:
        msgspec.convert(value, tp)
    except (msgspec.ValidationError, TypeError):
        return False
    return True


def _field_names(tp: Any) -> list[str]:
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        # ``password`` is filled in by the loader, never a key of the file.
        return [
            field.encode_name
            for field in msgspec.structs.fields(tp)
            if field.encode_name not in ("password", "secret")
        ]
    return []


def _expected(tp: Any) -> str | None:
    """What a value of type ``tp`` must be, in words, from its msgspec constraints."""
    optional = (
        typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()
    )
    if len(optional) == 2 and type(None) in optional:  # ``T | None``: say what T must be
        return _expected(next(arg for arg in optional if arg is not type(None)))
    try:
        info = msgspec.inspect.type_info(tp)
    except (TypeError, ValueError):
        return None
    description = None
    if isinstance(info, msgspec.inspect.Metadata):
        description = (info.extra_json_schema or {}).get("description")
        info = info.type
    if description:
        return str(description)
    if isinstance(info, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        noun = "an integer" if isinstance(info, msgspec.inspect.IntType) else "a number"
        if info.ge is not None and info.le is not None:
            return f"{noun} from {info.ge:g} to {info.le:g}"
        bounds = [
            f"{op} {bound:g}"
            for op, bound in ((">=", info.ge), (">", info.gt), ("<=", info.le), ("<", info.lt))
            if bound is not None
        ]
        return " ".join([noun, " and ".join(bounds)]).strip()
    if isinstance(info, msgspec.inspect.LiteralType):
        return "one of " + ", ".join(repr(v) for v in sorted(info.values, key=str))
    if isinstance(info, msgspec.inspect.BoolType):
        return "true or false"
    if isinstance(info, msgspec.inspect.StrType):
        if info.min_length:
            chars = "character" if info.min_length == 1 else "characters"
            return f"a string of at least {info.min_length} {chars}"
        return "a string"
    if isinstance(info, msgspec.inspect.ListType):
        if info.min_length:
            items = "item" if info.min_length == 1 else "items"
            return f"a list of at least {info.min_length} {items}"
        return "a list"
    if isinstance(info, msgspec.inspect.StructType | msgspec.inspect.DictType):
        return "a table"
    return None


def _dotted(path: Path) -> str:
    """``("channels", 1, "name")`` as ``channels[1].name``; table keys as TOML writes them."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _TOML_BARE_KEY.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
            out += f".{key}" if out else key
    return out


def _show(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= _MAX_SHOWN else shown[: _MAX_SHOWN - 3] + "..."


def _plain(text: str) -> str:
    text = text.replace("`", "")
    return text[:1].lower() + text[1:]
