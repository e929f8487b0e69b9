"""The store's interface: what the applier, translators, API and operator commands may ask.

Exceptions::

    StoreError
    ├── StoreUnavailable   Redis unreachable or failing: retry later
    └── ModelLost          the live model's identity marker is gone (Redis lost its data,
                           was flushed, or failed over to an empty replica): stop writing,
                           rebuild the model from the topics (see stocksync.daemon.healing)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import msgspec

from stocksync.codecs.state import OrderState, Position, RmaState
from stocksync.errors import StocksyncError

__all__ = [
    "ModelLost",
    "ModelStore",
    "PositionStore",
    "StateStore",
    "StoreError",
    "StoreUnavailable",
    "Write",
]


class StoreError(StocksyncError):
    """Root of the store's errors."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or failed a command; the caller retries with backoff."""


class ModelLost(StoreError):
    """The model this store was writing is gone from Redis; nothing was read or written."""


class Write(msgspec.Struct, frozen=True, gc=False):
    """One SKU of a batch write: its new position and the version it was read at."""

    position: Position
    expected_version: int
    #: Checkout holds whose line of this SKU the write converts (order.created with
    #: hold_id); only :class:`~stocksync.store.RedisStore` keeps holds, the memory store
    #: (a rebuild's replay) leaves them alone.
    holds: tuple[str, ...] = ()
    #: ``correlation_id`` of the last event applied, for the change entry (the feed's).
    correlation_id: str | None = None


class PositionStore(Protocol):
    """What the applier needs of a store."""

    async def load_positions(self, skus: Sequence[str]) -> dict[str, Position]:
        """The stored positions of ``skus``; SKUs never written are absent."""

    async def write_batch(self, writes: Sequence[Write]) -> list[str]:
        """Write every SKU or none (of a shard, on a cluster); the SKUs whose version differed."""


class StateStore(Protocol):
    """What the order and returns translators need of a store."""

    async def load_orders(self, order_ids: Sequence[str]) -> dict[str, OrderState]:
        """Stored states of these orders; unknown orders are absent."""

    async def load_rmas(self, rma_ids: Sequence[str]) -> dict[str, RmaState]:
        """Stored states of these RMAs; unknown RMAs are absent."""

    async def save_states(self, states: Iterable[OrderState | RmaState]) -> None:
        """Store these order and RMA states, never rolling a newer one back."""


class ModelStore(PositionStore, StateStore, Protocol):
    """The whole model of one generation: positions, states, served forms and its identity.

    Every load and write checks the identity marker in the same step and raises
    :class:`ModelLost` when it is not the generation this store is bound to.
    """

    @property
    def namespace(self) -> str:
        """The effective namespace this store reads and writes."""

    @property
    def generation(self) -> str | None:
        """The identity of the model this store is bound to (None: no model)."""

    async def resolve(self) -> str:
        """Bind to the live generation (follow the pointer, read its marker); its namespace."""

    async def begin_generation(self, generation: str) -> None:
        """Mark the current (empty) namespace as generation ``generation`` and bind to it."""

    async def model_present(self) -> bool:
        """Tell whether the model this store is bound to is still in the store."""

    async def load_versions(self, skus: Sequence[str]) -> dict[str, int]:
        """Stored versions of ``skus`` (no identity check: for a rebuild reading the old model)."""

    async def served_page(self, cursor: int, count: int) -> tuple[int, list[bytes]]:
        """About ``count`` SKUs' served forms from SCAN ``cursor``; the next cursor (0: done)."""

    async def any_sku(self) -> bool:
        """Whether the bound generation holds any SKU."""

    async def sku_count(self) -> int:
        """How many SKUs the bound generation holds."""
