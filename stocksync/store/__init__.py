"""The one adapter over Redis: keys, fields, codecs, scripts, change stream, generations.

Everything that reads or writes the model goes through a store of this
package: :class:`RedisStore` in production, :class:`MemoryStore` in tests and
in the rebuild's replay; both pass one contract suite (``tests/store``).
"""

from stocksync.store.memory import MemoryServer, MemoryStore
from stocksync.store.protocol import (
    ModelLost,
    ModelStore,
    PositionStore,
    StateStore,
    StoreError,
    StoreUnavailable,
    Write,
)
from stocksync.store.redis import WRITE_CHUNK, RedisStore, SwitchRefused

__all__ = [
    "WRITE_CHUNK",
    "MemoryServer",
    "MemoryStore",
    "ModelLost",
    "ModelStore",
    "PositionStore",
    "RedisStore",
    "StateStore",
    "StoreError",
    "StoreUnavailable",
    "SwitchRefused",
    "Write",
]
