"""Configuration: the :class:`Settings` Struct and the loader that builds it once at start."""

from stocksync.config.addresses import redacted_url
from stocksync.config.loader import (
    CONFIG_ENV,
    ENV_OVERRIDES,
    SECRET_ENV,
    ConfigError,
    bootstrap_servers,
    config_path,
    load_configuration,
    load_settings,
)
from stocksync.config.settings import (
    ApiSettings,
    ChannelSettings,
    KafkaSecuritySettings,
    NodeSettings,
    ProbeSettings,
    RedisSecuritySettings,
    Secret,
    Settings,
    TokenSettings,
    WorkerSettings,
    is_probe_sku,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_OVERRIDES",
    "SECRET_ENV",
    "ApiSettings",
    "ChannelSettings",
    "ConfigError",
    "KafkaSecuritySettings",
    "NodeSettings",
    "ProbeSettings",
    "RedisSecuritySettings",
    "Secret",
    "Settings",
    "TokenSettings",
    "WorkerSettings",
    "bootstrap_servers",
    "config_path",
    "is_probe_sku",
    "load_configuration",
    "load_settings",
    "redacted_url",
]
