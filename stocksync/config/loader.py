"""Build the one validated :class:`Settings` from a TOML file and ``STOCKSYNC_*`` variables.

Exceptions::

    Exception
    └── ConfigError    any problem with the configuration, as one line of text

Every message names the field (``api.port``, ``channels[1].low_stock_threshold``,
``nodes.dc-east.safety_stock``) or, when an environment variable set the value,
that variable (``STOCKSYNC_API_PORT``), shows the bad value with ``!r`` and says
what to do. The program stops on the first problem; it never starts half-configured.
"""

from __future__ import annotations

import re
import tomllib
import typing
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from stocksync.config.settings import Settings

__all__ = [
    "CONFIG_ENV",
    "ENV_OVERRIDES",
    "ConfigError",
    "bootstrap_servers",
    "config_path",
    "load_settings",
]

#: The variable naming the configuration file when ``--config`` is not given.
CONFIG_ENV: Final = "STOCKSYNC_CONFIG"

#: Environment variables that override one setting each, with the setting they set.
ENV_OVERRIDES: Final[Mapping[str, str]] = {
    "STOCKSYNC_BROKER": "broker",
    "STOCKSYNC_REDIS_URL": "redis_url",
    "STOCKSYNC_TOPIC_PREFIX": "topic_prefix",
    "STOCKSYNC_REDIS_NAMESPACE": "redis_namespace",
    "STOCKSYNC_PARTITIONS": "partitions",
    "STOCKSYNC_API_HOST": "api.host",
    "STOCKSYNC_API_PORT": "api.port",
    "STOCKSYNC_WORKER_HOST": "worker.host",
    "STOCKSYNC_WORKER_PORT": "worker.port",
}
_INT_OVERRIDES: Final = frozenset(
    {"STOCKSYNC_PARTITIONS", "STOCKSYNC_API_PORT", "STOCKSYNC_WORKER_PORT"}
)

_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})")
_BROKER_FORM = "kafka://host:port[;host:port...] or host:port"
_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
_TOML_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MSGSPEC_ERROR = re.compile(
    r"^(?P<text>.*?)(?: - at `(?P<path>[^`]*)`(?: in `(?P<within>[^`]*)`)?)?$"
)
_PATH_PART = re.compile(r"\.(?P<name>[^.\[]+)|\[(?P<index>[0-9]+)\]|\[(?P<any>\.\.\.)\]")
_MAX_SHOWN = 120

Path = tuple[str | int, ...]


class ConfigError(Exception):
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
    file = config_path(path, env)
    origin = "--config" if path is not None else CONFIG_ENV
    raw: dict[str, Any] = {} if file is None else _read_toml(file, origin)
    overridden = _apply_env(raw, env)
    context = _Context(file, overridden, env)
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        raise context.from_validation(str(exc), raw) from None
    return _check(settings, context)


def bootstrap_servers(settings: Settings) -> list[str]:
    """The ``host:port`` addresses of the configured Kafka broker, for aiokafka."""
    servers = _parse_broker(settings.broker)
    if servers is None:  # load_settings already refused such a URL
        raise ConfigError(f"broker = {settings.broker!r} is invalid: expected {_BROKER_FORM}")
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
        value: str | int = text
        if name in _INT_OVERRIDES and text.isascii() and text.isdigit():
            value = int(text)
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
    servers = _parse_broker(settings.broker)
    if servers is None:
        raise context.invalid(("broker",), settings.broker, f"expected {_BROKER_FORM}")
    problem = _redis_url_problem(settings.redis_url)
    if problem:
        raise context.invalid(("redis_url",), settings.redis_url, problem)

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
    used = {node for channel in settings.channels for node in channel.nodes}
    unused = next((node for node in settings.nodes if node not in used), None)
    if unused is not None:
        raise ConfigError(
            f"{_dotted(('nodes', unused))}: no channel lists node {unused!r}, so its settings"
            f" would have no effect; add it to a channel's nodes or remove the table (a typo?)"
            f" {context.where}"
        )

    for field in ("name", "sha256"):
        first_token: dict[str, int] = {}
        for i, token in enumerate(settings.api.tokens):
            value = getattr(token, field)
            if value in first_token:
                raise context.duplicate(("api", "tokens", i, field), value, first_token[value])
            first_token[value] = i
    return msgspec.structs.replace(settings, broker="kafka://" + ";".join(servers))


def _parse_broker(url: str) -> list[str] | None:
    """``host:port`` strings of a broker URL, or ``None`` when it is not of the accepted form."""
    rest = url.removeprefix("kafka://")
    servers = rest.split(";")
    for server in servers:
        match = _HOST_PORT.fullmatch(server)
        if match is None or not 0 < int(match["port"]) < 65536:
            return None
    return servers


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

    def __init__(self, file: str | None, overridden: dict[Path, str], env: Mapping[str, str]):
        self.where = f"in {file}" if file else "in the configuration file"
        self.overridden = overridden
        self.env = env

    def invalid(
        self, path: Path, value: object, problem: str, fix: str | None = None
    ) -> ConfigError:
        """A bad value at ``path``, named by its variable when one set it."""
        variable = self.overridden.get(path)
        if variable is not None:
            shown = _show(self.env[variable])
            return ConfigError(
                f"{variable} = {shown} is invalid: {problem}; set {variable} to a valid value"
                " or unset it"
            )
        fix = f"{fix} {self.where}" if fix else f"change it {self.where}"
        return ConfigError(f"{_dotted(path)} = {_show(value)} is invalid: {problem}; {fix}")

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
        return [field.encode_name for field in msgspec.structs.fields(tp)]
    return []


def _expected(tp: Any) -> str | None:
    """What a value of type ``tp`` must be, in words, from its msgspec constraints."""
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
