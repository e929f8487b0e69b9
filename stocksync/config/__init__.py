"""Configuration: the :class:`Settings` Struct and the loader that builds it once at start."""

from stocksync.config.loader import (
    CONFIG_ENV,
    ENV_OVERRIDES,
    ConfigError,
    bootstrap_servers,
    config_path,
    load_settings,
)
from stocksync.config.settings import (
    ApiSettings,
    ChannelSettings,
    NodeSettings,
    Settings,
    TokenSettings,
    WorkerSettings,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_OVERRIDES",
    "ApiSettings",
    "ChannelSettings",
    "ConfigError",
    "NodeSettings",
    "Settings",
    "TokenSettings",
    "WorkerSettings",
    "bootstrap_servers",
    "config_path",
    "load_settings",
]
