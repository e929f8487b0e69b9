"""The availability API: answers storefronts from an in-memory copy of the read model."""

from stocksync.api.app import create_app
from stocksync.api.server import run

__all__ = ["create_app", "run"]
