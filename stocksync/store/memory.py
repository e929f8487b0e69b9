"""The same contract in memory: for tests, benchmarks and the rebuild's replay.

Values are kept encoded with the layout's own codecs, so what is loaded is a
copy, as from Redis. A :class:`MemoryServer` plays the Redis server: several
stores (generations) share one, and :meth:`MemoryServer.lose` empties it the
way a Redis restarted without persistence is empty.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from stocksync.codecs.projections import Served
from stocksync.codecs.state import OrderState, Position, RmaState
from stocksync.readmodel import core
from stocksync.store.generation import effective_namespace
from stocksync.store.layout import (
    Keys,
    change_fields,
    decode_order,
    decode_position,
    decode_rma,
    encode_position,
    encode_state,
    reload_fields,
    state_mark,
)
from stocksync.store.protocol import ModelLost, StoreError, Write
from stocksync.store.redis import SwitchRefused
from stocksync.store.served import decode_served, served_bytes

__all__ = ["MemoryServer", "MemoryStore"]


class _Space:
    """One namespace's keys."""

    def __init__(self) -> None:
        self.marker: str | None = None
        self.skus: dict[str, tuple[int, bytes, bytes]] = {}  # version, position, served
        self.states: dict[str, tuple[str, str, bytes]] = {}  # src, mark, state
        self.changes: list[tuple[bytes, dict[bytes, bytes]]] = []
        self.meta: dict[str, str] = {}


class MemoryServer:
    """What a Redis server holds, for memory stores."""

    def __init__(self) -> None:
        self.spaces: dict[str, _Space] = {}
        self.pointers: dict[str, str] = {}
        self.locks: dict[str, tuple[str, float]] = {}
        self.workers: dict[str, dict[str, float]] = {}
        self._seq = 0

    def space(self, namespace: str) -> _Space:
        """The keys of ``namespace`` (created empty)."""
        found = self.spaces.get(namespace)
        if found is None:
            found = self.spaces[namespace] = _Space()
        return found

    def lose(self) -> None:
        """Forget everything, as a Redis restarted without persistence would."""
        self.spaces.clear()
        self.pointers.clear()
        self.locks.clear()
        self.workers.clear()

    def next_id(self) -> bytes:
        """A new stream entry id."""
        self._seq += 1
        return f"{int(time.time() * 1000)}-{self._seq}".encode()


class MemoryStore:
    """The read model of one generation in memory (see :class:`~stocksync.store.RedisStore`)."""

    def __init__(
        self,
        namespace: str = "stocksync",
        *,
        base: str | None = None,
        topology: core.Topology | None = None,
        generation: str | None = None,
        server: MemoryServer | None = None,
    ) -> None:
        self.server = server or MemoryServer()
        self.keys = Keys(namespace, base)
        self.topology = topology
        self._generation = generation

    @classmethod
    async def fresh(cls, topology: core.Topology, generation: str = "memory") -> MemoryStore:
        """A store of a new, empty generation of its own (the rebuild's replay target)."""
        store = cls(topology=topology)
        await store.begin_generation(generation)
        return store

    def beside(self, namespace: str, *, generation: str | None = None) -> MemoryStore:
        """A store on the same server for another namespace under the same base."""
        return MemoryStore(
            namespace, base=self.keys.base, topology=self.topology, generation=generation,
            server=self.server,
        )

    @property
    def _space(self) -> _Space:
        return self.server.space(self.keys.ns)

    @property
    def namespace(self) -> str:
        """The effective namespace this store reads and writes."""
        return self.keys.ns

    @property
    def generation(self) -> str | None:
        """The identity of the model this store is bound to (None: no model)."""
        return self._generation

    def _check(self) -> _Space:
        space = self._space
        if self._generation is None or space.marker != self._generation:
            raise ModelLost(f"the model {self._generation!r} is gone from {self.keys.ns!r}")
        return space

    # --- generations and identity ---

    async def live_namespace(self) -> tuple[str, str | None]:
        """The live effective namespace and the generation its marker names."""
        base = self.keys.base
        namespace = effective_namespace(base, self.server.pointers.get(base))
        space = self.server.spaces.get(namespace)
        return namespace, None if space is None else space.marker

    async def resolve(self) -> str:
        """Bind to the live generation; its namespace."""
        namespace, generation = await self.live_namespace()
        self.keys = Keys(namespace, self.keys.base)
        self._generation = generation
        return namespace

    async def begin_generation(self, generation: str) -> None:
        """Mark this namespace as generation ``generation``; bind to it."""
        space = self._space
        if space.marker is not None and space.marker != generation:
            raise StoreError(f"{self.keys.ns!r} already holds generation {space.marker!r}")
        space.marker = generation
        self._generation = generation

    async def model_present(self) -> bool:
        """Tell whether the bound model is still there."""
        space = self.server.spaces.get(self.keys.ns)
        return self._generation is not None and space is not None and (
            space.marker == self._generation
        )

    async def write_meta(self, facts: Mapping[str, str]) -> None:
        """Record facts about this generation."""
        self._space.meta.update(facts)

    async def meta(self) -> dict[str, str]:
        """The facts recorded about this generation."""
        return dict(self._space.meta)

    async def switch_to(self, generation: str, previous: str | None) -> None:
        """Make ``generation`` live unless the pointer moved from ``previous`` meanwhile."""
        base = self.keys.base
        if self.server.pointers.get(base) != previous:
            raise SwitchRefused(f"another rebuild switched the model under {base!r} meanwhile")
        self.server.pointers[base] = generation
        old = self.server.space(effective_namespace(base, previous))
        fields = reload_fields(effective_namespace(base, generation), generation)
        old.changes.append(
            (self.server.next_id(), {k.encode(): v.encode() for k, v in fields.items()})
        )

    async def pointer(self) -> str | None:
        """The generation the base pointer names."""
        return self.server.pointers.get(self.keys.base)

    # --- positions ---

    async def load_positions(self, skus: Sequence[str]) -> dict[str, Position]:
        """Stored positions of ``skus`` (decoded copies)."""
        space = self._check()
        found = ((s, space.skus.get(s)) for s in skus)
        return {s: decode_position(v[1]) for s, v in found if v is not None}

    async def write_batch(self, writes: Sequence[Write], *, announce: bool = True) -> list[str]:
        """Compare-and-set every SKU of the batch, all or nothing."""
        if self.topology is None:
            raise StoreError("this store was opened without a topology and cannot write SKUs")
        space = self._check()
        conflicts = [
            w.position.sku
            for w in writes
            if space.skus.get(w.position.sku, (0, b"", b""))[0] != w.expected_version
        ]
        if conflicts:
            return conflicts
        for w in writes:
            pos = w.position
            served = served_bytes(pos, self.topology)
            space.skus[pos.sku] = (pos.version, encode_position(pos), served)
            if announce:
                fields = change_fields(pos.sku, pos.version, served, w.correlation_id)
                space.changes.append((self.server.next_id(), {
                    k.encode(): v if isinstance(v, bytes) else str(v).encode()
                    for k, v in fields.items()
                }))
        return []

    async def load_versions(self, skus: Sequence[str]) -> dict[str, int]:
        """Stored versions of ``skus``."""
        space = self._space
        return {s: space.skus[s][0] for s in skus if s in space.skus}

    async def served_page(self, cursor: int, count: int) -> tuple[int, list[bytes]]:
        """Served forms from position ``cursor`` of the SKUs in insertion order."""
        values = [v[2] for v in self._space.skus.values()]
        end = cursor + count
        return (end if end < len(values) else 0), values[cursor:end]

    async def any_sku(self) -> bool:
        """Whether the bound generation holds any SKU."""
        return bool(self._space.skus)

    async def sku_count(self) -> int:
        """How many SKUs the bound generation holds."""
        return len(self._space.skus)

    def served_of(self, sku: str) -> Served | None:
        """The stored served form of ``sku`` (decoded), or None: for tests."""
        found = self._space.skus.get(sku)
        return None if found is None else decode_served(found[2])

    def version_of(self, sku: str) -> int:
        """The stored version of ``sku`` (0: never written)."""
        return self._space.skus.get(sku, (0, b"", b""))[0]

    def positions(self) -> Iterator[Position]:
        """Every stored position (decoded copies), for a rebuild copying the model out."""
        for _, raw, _ in self._space.skus.values():
            yield decode_position(raw)

    def states(self) -> Iterator[OrderState | RmaState]:
        """Every stored order and RMA state (decoded copies)."""
        for key, (_, _, raw) in self._space.states.items():
            yield decode_order(raw) if key.startswith("order:") else decode_rma(raw)

    # --- order and RMA states ---

    async def load_orders(self, order_ids: Sequence[str]) -> dict[str, OrderState]:
        """Stored states of these orders."""
        space = self._check()
        found = ((i, space.states.get(f"order:{i}")) for i in order_ids)
        return {i: decode_order(v[2]) for i, v in found if v is not None}

    async def load_rmas(self, rma_ids: Sequence[str]) -> dict[str, RmaState]:
        """Stored states of these RMAs."""
        space = self._check()
        found = ((i, space.states.get(f"rma:{i}")) for i in rma_ids)
        return {i: decode_rma(v[2]) for i, v in found if v is not None}

    async def save_states(self, states: Iterable[OrderState | RmaState]) -> None:
        """Store order and RMA states, never rolling one back."""
        items = list(states)
        if not items:
            return
        space = self._check()
        for state in items:
            key = (
                f"order:{state.order_id}"
                if isinstance(state, OrderState)
                else f"rma:{state.rma_id}"
            )
            stored = space.states.get(key)
            mark = state_mark(state)
            if stored is not None and stored[0] == state.src and stored[1] >= mark:
                continue
            space.states[key] = (state.src, mark, encode_state(state))

    # --- the change stream ---

    async def changes_info(self, shard: int = 0) -> dict[str, Any] | None:
        """Length and last id of the change stream, or None when it is empty."""
        changes = self._space.changes
        if not changes:
            return None
        return {"length": len(changes), "last-generated-id": changes[-1][0]}

    async def read_changes(
        self, after: str, count: int, block_ms: int | None, shard: int = 0
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Change entries after id ``after`` (never blocks; one shard)."""
        key = _id_key(after.encode())
        return [e for e in self._space.changes if _id_key(e[0]) > key][:count]

    # --- workers and the rebuild lock ---

    async def beat(self, worker_id: str, stale_after: float) -> None:
        """Record that ``worker_id`` is running."""
        self.server.workers.setdefault(self.keys.base, {})[worker_id] = time.time()

    async def forget_worker(self, worker_id: str) -> None:
        """Remove ``worker_id``'s heartbeat."""
        self.server.workers.get(self.keys.base, {}).pop(worker_id, None)

    async def live_workers(self, fresh_for: float) -> list[str]:
        """Workers whose last heartbeat is at most ``fresh_for`` seconds old."""
        now = time.time()
        beats = self.server.workers.get(self.keys.base, {})
        return sorted(w for w, at in beats.items() if now - at <= fresh_for)

    async def take_rebuild_lock(self, owner: str, ttl: float) -> bool:
        """Take the rebuild lock unless someone holds it."""
        held = self.server.locks.get(self.keys.base)
        if held is not None and held[1] > time.monotonic():
            return False
        self.server.locks[self.keys.base] = (owner, time.monotonic() + ttl)
        return True

    async def renew_rebuild_lock(self, owner: str, ttl: float) -> bool:
        """Extend the lock ``owner`` holds."""
        held = self.server.locks.get(self.keys.base)
        if held is None or held[0] != owner or held[1] <= time.monotonic():
            return False
        self.server.locks[self.keys.base] = (owner, time.monotonic() + ttl)
        return True

    async def release_rebuild_lock(self, owner: str) -> None:
        """Give the lock back if ``owner`` holds it."""
        held = self.server.locks.get(self.keys.base)
        if held is not None and held[0] == owner:
            del self.server.locks[self.keys.base]


def _id_key(raw: bytes) -> tuple[int, int]:
    ms, _, seq = raw.decode().partition("-")
    return int(ms), int(seq or 0)
