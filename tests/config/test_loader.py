"""The settings loader: defaults, TOML, environment overrides, one clear error per problem."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from stocksync.config import (
    ENV_OVERRIDES,
    ConfigError,
    Settings,
    bootstrap_servers,
    is_probe_sku,
    load_settings,
)
from stocksync.config.connections import security_warnings
from tests.unprivileged import as_unprivileged, open_folder

HASH_A = "a" * 64
HASH_B = "b" * 64

# The contract's example configuration ("Starting it").
CONTRACT_EXAMPLE = """
[[channels]]
name = "web"
nodes = ["dc-east", "dc-west"]
buffer = 0
low_stock_threshold = 5

[nodes.dc-east]
safety_stock = 2
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "stocksync.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, text), env or {})


def test_defaults_without_file_or_env() -> None:
    settings = load_settings(None, {})
    assert settings == Settings()
    assert settings.broker == "kafka://127.0.0.1:9092"
    assert [c.name for c in settings.channels] == ["web"]


def test_unrelated_environment_is_ignored() -> None:
    assert load_settings(None, {"STOCKSYNC_UNKNOWN": "x", "PORT": "1"}) == Settings()


def test_contract_example_loads(tmp_path: Path) -> None:
    settings = load_text(tmp_path, CONTRACT_EXAMPLE)
    (web,) = settings.channels
    assert (web.name, web.nodes, web.buffer, web.low_stock_threshold) == (
        "web",
        ["dc-east", "dc-west"],
        0,
        5,
    )
    assert settings.nodes["dc-east"].safety_stock == 2


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_text(tmp_path, "") == Settings()


def test_path_from_stocksync_config(tmp_path: Path) -> None:
    path = write(tmp_path, "partitions = 3\n")
    assert load_settings(None, {"STOCKSYNC_CONFIG": path}).partitions == 3


def test_argument_wins_over_stocksync_config(tmp_path: Path) -> None:
    path = write(tmp_path, "partitions = 3\n")
    missing = str(tmp_path / "missing.toml")
    assert load_settings(path, {"STOCKSYNC_CONFIG": missing}).partitions == 3


@pytest.mark.parametrize(
    ("env", "attribute", "expected"),
    [
        ({"STOCKSYNC_BROKER": "kafka://k1:9092;k2:9093"}, "broker", "kafka://k1:9092;k2:9093"),
        ({"STOCKSYNC_BROKER": "k1:9092"}, "broker", "kafka://k1:9092"),
        ({"STOCKSYNC_REDIS_URL": "rediss://r:6380/2"}, "redis_url", "rediss://r:6380/2"),
        ({"STOCKSYNC_REDIS_URL": "unix:///run/redis.sock"}, "redis_url", "unix:///run/redis.sock"),
        ({"STOCKSYNC_API_PORT": "9000"}, "api.port", 9000),
        ({"STOCKSYNC_API_HOST": "0.0.0.0"}, "api.host", "0.0.0.0"),
        ({"STOCKSYNC_WORKER_PORT": "0"}, "worker.port", 0),
        ({"STOCKSYNC_WORKER_HOST": "::"}, "worker.host", "::"),
        ({"STOCKSYNC_TOPIC_PREFIX": "shop-eu"}, "topic_prefix", "shop-eu"),
        ({"STOCKSYNC_PARTITIONS": "24"}, "partitions", 24),
        ({"STOCKSYNC_REDIS_NAMESPACE": "dev"}, "redis_namespace", "dev"),
        ({"STOCKSYNC_PROBE_API_URL": "http://api-1:8080"}, "probe.api_url", "http://api-1:8080"),
        ({"STOCKSYNC_REDIS_CLUSTER": "1"}, "redis_cluster", True),
        ({"STOCKSYNC_REDIS_CLUSTER": "true"}, "redis_cluster", True),
        ({"STOCKSYNC_REDIS_CLUSTER": "0"}, "redis_cluster", False),
        ({"STOCKSYNC_REDIS_WAIT_REPLICAS": "1"}, "redis_wait_replicas", 1),
        ({"STOCKSYNC_FEED_PORT": "0"}, "feed.port", 0),
        ({"STOCKSYNC_FEED_HOST": "::"}, "feed.host", "::"),
    ],
)
def test_environment_overrides_file(
    tmp_path: Path, env: dict[str, str], attribute: str, expected: object
) -> None:
    text = """
broker = "kafka://file:1"
redis_url = "redis://file:1/0"
topic_prefix = "file"
partitions = 2
[api]
host = "file"
port = 1
max_skus = 7
[worker]
host = "file"
port = 2
"""
    settings = load_text(tmp_path, text, env)
    value: object = settings
    for part in attribute.split("."):
        value = getattr(value, part)
    assert value == expected
    assert settings.api.max_skus == 7  # the rest of the file still applies


def test_every_override_is_tested() -> None:
    # The table above names each variable; a new one needs a row.
    assert set(ENV_OVERRIDES) == {
        "STOCKSYNC_PROBE_API_URL",
        "STOCKSYNC_FEED_HOST",
        "STOCKSYNC_FEED_PORT",
        "STOCKSYNC_REDIS_NAMESPACE",
        "STOCKSYNC_BROKER",
        "STOCKSYNC_REDIS_URL",
        "STOCKSYNC_API_PORT",
        "STOCKSYNC_API_HOST",
        "STOCKSYNC_WORKER_PORT",
        "STOCKSYNC_WORKER_HOST",
        "STOCKSYNC_TOPIC_PREFIX",
        "STOCKSYNC_PARTITIONS",
        "STOCKSYNC_REDIS_CLUSTER",
        "STOCKSYNC_REDIS_WAIT_REPLICAS",
    }


def test_redis_wait_replicas_and_the_warning_without_it_on_a_cluster(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "redis_cluster = true\nredis_wait_replicas = 1\n")
    assert (settings.redis_wait_replicas, settings.redis_wait_timeout_ms) == (1, 1000)
    assert not any("redis_wait_replicas" in w for w in security_warnings(settings))
    bare = load_text(tmp_path, "redis_cluster = true\n")
    assert any("failover" in w for w in security_warnings(bare))
    assert not any("failover" in w for w in security_warnings(load_settings(None, {})))
    with pytest.raises(ConfigError, match="STOCKSYNC_REDIS_WAIT_REPLICAS") as err:
        load_settings(None, {"STOCKSYNC_REDIS_WAIT_REPLICAS": "-1"})
    assert "\n" not in str(err.value)


def test_redis_cluster_from_the_file_and_its_one_line_errors(tmp_path: Path) -> None:
    assert load_text(tmp_path, "redis_cluster = true\n").redis_cluster
    assert not load_settings(None, {}).redis_cluster
    with pytest.raises(ConfigError, match="STOCKSYNC_REDIS_CLUSTER") as err:
        load_settings(None, {"STOCKSYNC_REDIS_CLUSTER": "maybe"})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"redis_url.*only database 0"):
        load_text(tmp_path, 'redis_cluster = true\nredis_url = "redis://r:7000/3"\n')
    with pytest.raises(ConfigError, match=r"redis_url.*unix socket"):
        load_text(tmp_path, 'redis_cluster = true\nredis_url = "unix:///run/r.sock"\n')


def test_environment_overrides_defaults_without_file() -> None:
    settings = load_settings(None, {"STOCKSYNC_API_PORT": "9001"})
    assert settings.api.port == 9001
    assert settings.api.host == "127.0.0.1"


def test_bare_broker_is_normalised_and_split(tmp_path: Path) -> None:
    settings = load_text(tmp_path, 'broker = "a:1;b.example:9092;[::1]:29092"\n')
    assert settings.broker == "kafka://a:1;b.example:9092;[::1]:29092"
    assert bootstrap_servers(settings.broker) == ["a:1", "b.example:9092", "[::1]:29092"]


def test_bootstrap_servers_of_defaults() -> None:
    assert bootstrap_servers(Settings().broker) == ["127.0.0.1:9092"]


def test_tokens_load(tmp_path: Path) -> None:
    text = f"""
[[api.tokens]]
name = "storefront"
sha256 = "{HASH_A}"
[[api.tokens]]
name = "ops"
sha256 = "{HASH_B}"
scopes = ["availability:read", "admin"]
rate = 50
"""
    tokens = load_text(tmp_path, text).api.tokens
    assert [(t.name, t.scopes, t.rate) for t in tokens] == [
        ("storefront", ["availability:read"], 0.0),
        ("ops", ["availability:read", "admin"], 50.0),
    ]


def two_channels(second: str) -> str:
    return f"""
[[channels]]
name = "web"
nodes = ["dc-east"]
[[channels]]
{second}
"""


def two_tokens(first: str, second: str) -> str:
    return f"""
[[api.tokens]]
{first}
[[api.tokens]]
{second}
"""


# (TOML text, environment, parts the one-line message must contain)
BAD = [
    pytest.param("[api]\nport = 70000\n", {}, ["api.port", "70000", "0 to 65535"], id="port-range"),
    pytest.param("[api]\nport = '8080'\n", {}, ["api.port", "'8080'", "integer"], id="port-type"),
    pytest.param(
        "[api]\nbody_timeout_s = 0\n", {}, ["api.body_timeout_s", "0", "> 0"], id="body-timeout"
    ),
    pytest.param(
        "[api]\nmax_connections = 0\n", {}, ["api.max_connections", "0", "> 0"], id="max-conn"
    ),
    pytest.param(
        "[[api.tokens]]\nname = 'a'\nsha256 = '" + "0" * 64 + "'\nscopes = ['holds:read']\n",
        {},
        ["api.tokens[0].scopes[0]", "'holds:read'", "holds:write"],
        id="unknown-scope",
    ),
    pytest.param(
        two_channels('name = "b2b"\nnodes = ["dc-east"]\nlow_stock_threshold = -1'),
        {},
        ["channels[1].low_stock_threshold", "-1", ">= 0"],
        id="nested-list-field",
    ),
    pytest.param(
        two_channels('name = "web"\nnodes = ["dc-west"]'),
        {},
        ["channels[1].name", "'web'", "channels[0].name", "unique"],
        id="duplicate-channel",
    ),
    pytest.param(
        '[[channels]]\nname = "web"\nnodes = ["dc-east", "dc-east"]\n',
        {},
        ["channels[0].nodes[1]", "'dc-east'", "once"],
        id="duplicate-node-in-channel",
    ),
    pytest.param(
        '[[channels]]\nname = "web"\n',
        {},
        ["channels[0].nodes", "missing", "add"],
        id="missing-field",
    ),
    pytest.param(
        '[[channels]]\nname = "web shop"\nnodes = ["a"]\n',
        {},
        ["channels[0].name", "'web shop'", "[A-Za-z0-9._:/-]"],
        id="identifier",
    ),
    pytest.param("channels = []\n", {}, ["channels", "[]", "at least one"], id="no-channels"),
    pytest.param(
        "[api]\nprot = 8080\n", {}, ["api.prot", "8080", "spelling", "port"], id="unknown-key"
    ),
    pytest.param("colour = 'red'\n", {}, ["colour", "'red'", "not a setting"], id="unknown-top"),
    pytest.param(
        "[nodes.dc-east]\nsafety_stock = -2\n",
        {},
        ["nodes.dc-east.safety_stock", "-2", ">= 0"],
        id="table-key-in-path",
    ),
    pytest.param(
        '[nodes."dc east"]\nsafety_stock = 1\n', {}, ["nodes", "'dc east'", "rename"], id="bad-key"
    ),
    pytest.param(
        'broker = "http://k:9092"\n', {}, ["broker", "'http://k:9092'", "kafka://"], id="broker"
    ),
    pytest.param(
        'broker = "kafka://k1:9092,k2:9092"\n',
        {},
        ["broker", "'kafka://k1:9092,k2:9092'", "host:port"],
        id="broker-comma",
    ),
    pytest.param('broker = "k1"\n', {}, ["broker", "'k1'"], id="broker-no-port"),
    pytest.param('broker = "k1:70000"\n', {}, ["broker", "'k1:70000'"], id="broker-port"),
    pytest.param(
        'redis_url = "http://r:6379"\n',
        {},
        ["redis_url", "'http://r:6379'", "redis://"],
        id="redis-scheme",
    ),
    pytest.param(
        'redis_url = "redis://r/x"\n', {}, ["redis_url", "'redis://r/x'", "database"], id="redis-db"
    ),
    pytest.param(
        'topic_prefix = "shop/eu"\n',
        {},
        ["topic_prefix", "'shop/eu'", "Kafka"],
        id="topic-prefix-charset",
    ),
    pytest.param(
        "[api]\naccess_log = 'verbose'\n",
        {},
        ["api.access_log", "'verbose'", "'sampled'"],
        id="literal",
    ),
    pytest.param(
        "[worker]\ndedup_window_hours = 1\n",
        {},
        ["worker.dedup_window_hours", "1", ">= 24"],
        id="float-bound",
    ),
    pytest.param("api = 5\n", {}, ["api", "5", "table"], id="not-a-table"),
    pytest.param(
        '[[api.tokens]]\nname = "a"\nsha256 = "ABC"\n',
        {},
        ["api.tokens[0].sha256", "'ABC'", "hash-token"],
        id="token-hash-form",
    ),
    pytest.param(
        two_tokens(f'name = "a"\nsha256 = "{HASH_A}"', f'name = "a"\nsha256 = "{HASH_B}"'),
        {},
        ["api.tokens[1].name", "'a'", "api.tokens[0].name"],
        id="duplicate-token-name",
    ),
    pytest.param(
        two_tokens(f'name = "a"\nsha256 = "{HASH_A}"', f'name = "b"\nsha256 = "{HASH_A}"'),
        {},
        ["api.tokens[1].sha256", repr(HASH_A), "api.tokens[0].sha256"],
        id="duplicate-token-hash",
    ),
    pytest.param(
        f'[[api.tokens]]\nname = "a"\nsha256 = "{HASH_A}"\nscopes = ["write"]\n',
        {},
        ["api.tokens[0].scopes[0]", "'write'", "'admin'"],
        id="token-scope",
    ),
    pytest.param(
        "", {"STOCKSYNC_API_PORT": "http"}, ["STOCKSYNC_API_PORT", "'http'", "unset"], id="env-type"
    ),
    pytest.param(
        "[api]\nport = 1\n",
        {"STOCKSYNC_API_PORT": "70000"},
        ["STOCKSYNC_API_PORT", "'70000'", "0 to 65535"],
        id="env-range",
    ),
    pytest.param(
        "", {"STOCKSYNC_WORKER_PORT": "-1"}, ["STOCKSYNC_WORKER_PORT", "'-1'"], id="env-negative"
    ),
    pytest.param(
        "",
        {"STOCKSYNC_BROKER": "nope"},
        ["STOCKSYNC_BROKER", "'nope'", "kafka://"],
        id="env-broker",
    ),
    pytest.param(
        "",
        {"STOCKSYNC_REDIS_URL": "mysql://x"},
        ["STOCKSYNC_REDIS_URL", "'mysql://x'"],
        id="env-redis",
    ),
    pytest.param(
        "", {"STOCKSYNC_TOPIC_PREFIX": ""}, ["STOCKSYNC_TOPIC_PREFIX", "''"], id="env-empty"
    ),
    pytest.param(
        "",
        {"STOCKSYNC_PARTITIONS": "0"},
        ["STOCKSYNC_PARTITIONS", "'0'", "1 to 1024"],
        id="env-int",
    ),
]


@pytest.mark.parametrize(("text", "env", "parts"), BAD)
def test_bad_value_names_field_and_value(
    tmp_path: Path, text: str, env: dict[str, str], parts: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, env)
    message = str(caught.value)
    assert "\n" not in message
    assert "$." not in message  # msgspec's paths are translated
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_message_says_where_to_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "[api]\nport = -1\n")
    with pytest.raises(ConfigError, match=f"api.port = -1 is invalid: .*in {path}$"):
        load_settings(path, {})


def test_env_message_names_variable_not_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"STOCKSYNC_API_PORT": "99999"})
    assert str(caught.value).startswith("STOCKSYNC_API_PORT = '99999' is invalid")
    assert "api.port" not in str(caught.value)


def test_value_is_shown_exactly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, '[[channels]]\nname = "web  shop"\nnodes = ["a"]\n')
    assert "channels[0].name = 'web  shop' is invalid" in str(caught.value)


def test_long_values_are_shortened(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, f'broker = "{"x" * 1000}"\n')
    assert len(str(caught.value)) < 400


def test_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"'.*nope\.toml' \(from --config\) does not exist"):
        load_settings(missing, {})


def test_missing_file_from_env_names_the_variable(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"\(from STOCKSYNC_CONFIG\) does not exist"):
        load_settings(None, {"STOCKSYNC_CONFIG": missing})


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(str(tmp_path), {})


def test_unreadable_file() -> None:
    with open_folder() as folder:
        path = write(folder, "")
        os.chmod(path, 0)
        with pytest.raises(ConfigError, match="cannot be read: Permission denied"):
            as_unprivileged(lambda: load_settings(path, {}))  # root would read it


def test_toml_syntax_error_gives_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[api]\nport = 8080\nhost = \n")
    with pytest.raises(ConfigError, match=r"is not valid TOML: .*line 3"):
        load_settings(path, {})


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes("topic_prefix = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(str(path), {})


@pytest.mark.parametrize(
    ("path", "env", "match"),
    [
        ("", {}, "--config is empty"),
        (None, {"STOCKSYNC_CONFIG": ""}, "STOCKSYNC_CONFIG is set but empty"),
    ],
)
def test_empty_path(path: str | None, env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_settings(path, env)


def test_config_error_is_one_line() -> None:
    assert str(ConfigError("a\nb  c")) == "a b  c"


def test_settings_reject_unknown_fields_directly() -> None:
    # The loader relies on the Struct refusing unknown keys; keep it that way.
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"api": {"prot": 1}}, Settings)


@pytest.mark.parametrize(
    "env",
    [
        {"STOCKSYNC_TOPIC_PREFIX": "stocksync\n"},
        {"STOCKSYNC_REDIS_NAMESPACE": "stocksync\n"},
    ],
)
def test_a_trailing_newline_is_not_a_valid_name(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env))):
        load_settings(None, env)


def test_a_node_outside_every_channel_may_have_defaults(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "[nodes.dc-north]\nsafety_stock = 3\n")
    assert settings.nodes["dc-north"].safety_stock == 3


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("", {}, "stocksync"),
        ('topic_prefix = "shop-eu"\n', {}, "shop-eu"),
        ("", {"STOCKSYNC_TOPIC_PREFIX": "t1"}, "t1"),
        ('topic_prefix = "shop-eu"\nredis_namespace = "inv"\n', {}, "inv"),
        ("", {"STOCKSYNC_TOPIC_PREFIX": "t1", "STOCKSYNC_REDIS_NAMESPACE": "n1"}, "n1"),
    ],
)
def test_the_redis_namespace_follows_the_topic_prefix_unless_set(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    assert load_text(tmp_path, text, env).redis_namespace == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[probe]\nchannel = "nope"', "probe.channel = 'nope' is invalid: no channel has"),
        ('[probe]\nnode = "store-9"', "probe.node = 'store-9' is invalid: channel 'web' has"),
        ('[probe]\napi_url = "api-1:8080"', "probe.api_url = 'api-1:8080' is invalid: expected"),
        ('[probe]\nslo_seconds = 0', "probe.slo_seconds = 0 is invalid: expected a number"),
    ],
)
def test_a_bad_probe_setting_names_its_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, {})
    assert str(caught.value).startswith(message), caught.value


def test_only_the_configured_probe_sku_is_the_probe(tmp_path: Path) -> None:
    settings = load_text(tmp_path, '[probe]\nsku = "canary-1"', {})
    assert is_probe_sku(settings, "canary-1")
    assert not is_probe_sku(settings, "_stocksync-probe")
    assert is_probe_sku(load_text(tmp_path, "", {}), "_stocksync-probe")
