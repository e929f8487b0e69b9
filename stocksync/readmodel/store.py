"""Stores of the read model: one small Protocol, a Redis store and an in-memory store.

The applier writes a batch of changed SKUs at once: each SKU's position,
its encoded projection and one change-stream entry, on condition that every
SKU's stored version is still the one the applier read (compare-and-set). A
conflict means another applier wrote in between (a zombie after a rebalance,
or a stale cache); the whole batch is refused and the caller reloads and
re-applies, which the watermarks make harmless.

On Redis the batch is one Lua script call, one round trip. The script is
generic (compare versions, then HSET and XADD); no domain logic lives in Lua.

Exceptions::

    StoreError
    └── StoreUnavailable   (Redis unreachable or failing: retry later)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import hiredis
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from stocksync.codecs.state import OrderState, Position, RmaState, position_decoder, state_encoder
from stocksync.readmodel.keys import POSITION_FIELD, PROJECTION_FIELD, VERSION_FIELD, Keys

__all__ = [
    "MemoryStore",
    "PositionStore",
    "RedisStore",
    "StateStore",
    "StoreError",
    "StoreUnavailable",
    "Write",
    "state_mark",
]


class StoreError(Exception):
    """Root of the store's errors."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or failed a command; the caller retries with backoff."""


class Write(msgspec.Struct, frozen=True):
    """One SKU of a batch write: its new position, encoded projection and the version it read."""

    position: Position
    projection: bytes
    expected_version: int


class PositionStore(Protocol):
    """What the applier needs of a store."""

    async def load_positions(self, skus: Sequence[str]) -> dict[str, Position]:
        """The stored positions of ``skus``; SKUs never written are absent."""

    async def write_batch(self, writes: Sequence[Write]) -> list[str]:
        """Write every SKU or none; returns the SKUs whose version did not match (none written)."""


class StateStore(Protocol):
    """What the order and returns translators need of a store."""

    async def load_orders(self, order_ids: Sequence[str]) -> dict[str, OrderState]:
        """Stored states of these orders; unknown orders are absent."""

    async def load_rmas(self, rma_ids: Sequence[str]) -> dict[str, RmaState]:
        """Stored states of these RMAs; unknown RMAs are absent."""

    async def save_states(self, states: Iterable[OrderState | RmaState]) -> None:
        """Store these order and RMA states."""


_T = TypeVar("_T")
_order_decoder = msgspec.msgpack.Decoder(OrderState)
_rma_decoder = msgspec.msgpack.Decoder(RmaState)

# KEYS: n SKU hashes, then the change stream.
# ARGV: n, maxlen, then per SKU: expected version, new version, position, projection, sku.
_WRITE_BATCH = """
local n = tonumber(ARGV[1])
local conflicts = {}
for i = 1, n do
  local cur = redis.call('HGET', KEYS[i], 'v') or '0'
  if cur ~= ARGV[3 + (i - 1) * 5] then
    conflicts[#conflicts + 1] = i
  end
end
if #conflicts > 0 then
  return conflicts
end
local stream = KEYS[n + 1]
for i = 1, n do
  local a = 3 + (i - 1) * 5
  redis.call('HSET', KEYS[i], 'v', ARGV[a + 1], 'pos', ARGV[a + 2], 'proj', ARGV[a + 3])
  redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], '*',
             'sku', ARGV[a + 4], 'v', ARGV[a + 1], 'proj', ARGV[a + 3])
end
return conflicts
"""


# KEYS[1]: one order/RMA state hash. ARGV: source partition, mark, state, ttl seconds.
# Writes unless the stored state is from the same source partition and not older: a zombie
# translator finishing a batch after a rebalance must not roll a newer state back.
_SAVE_STATE = """
local src = redis.call('HGET', KEYS[1], 'src')
if src == ARGV[1] then
  local mark = redis.call('HGET', KEYS[1], 'm')
  if mark and mark >= ARGV[2] then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'src', ARGV[1], 'm', ARGV[2], 's', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


def state_mark(state: OrderState | RmaState) -> str:
    """How far a state has read its source partition, as a string that sorts in read order."""
    _, offset, index = state.wm
    return f"{offset:020d}:{index:06d}"


# KEYS: SKU hashes. Returns each one's position field (false when absent), in order.
_LOAD_POSITIONS = """
local found = {}
for i, key in ipairs(KEYS) do
  found[i] = redis.call('HGET', key, 'pos')
end
return found
"""

#: Most SKUs one script call writes: bounds how long Redis is busy with one call. The
#: compare-and-set is per SKU, so a batch written in several calls stays correct: after a
#: conflict the caller reloads, and what an earlier call wrote is skipped by its watermarks.
WRITE_CHUNK = 2000


class RedisStore:
    """The read model in Redis (layout in :mod:`stocksync.readmodel.keys`).

    Batch reads and writes are single script calls whose commands are packed by
    hiredis in C: with tens of thousands of arguments per batch, redis-py's
    pure-Python packing would cost more than the work itself.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        changes_maxlen: int = 1_000_000,
        state_ttl_seconds: int = 90 * 86_400,
    ) -> None:
        self.client = client
        self.keys = keys
        self.changes_maxlen = changes_maxlen
        self.state_ttl_seconds = state_ttl_seconds
        self._write = client.register_script(_WRITE_BATCH)
        self._load_positions = client.register_script(_LOAD_POSITIONS)
        self._save_state = client.register_script(_SAVE_STATE)

    @classmethod
    def from_url(
        cls,
        url: str,
        keys: Keys,
        *,
        client_options: Mapping[str, Any] | None = None,
        **options: int,
    ) -> RedisStore:
        """A store on a new connection pool for ``url`` (bytes responses, hiredis when present).

        ``client_options`` go to redis-py (credentials, TLS files).
        """
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=5,
            socket_connect_timeout=3,
            health_check_interval=10,
            **(client_options or {}),
        )
        return cls(client, keys, **options)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis did not answer PING: {exc}") from exc

    async def _evalsha(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a registered script with its command packed in C; load it first if needed."""
        packed = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        pool = self.client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            try:
                await connection.send_packed_command(packed)
                return await connection.read_response()
            except NoScriptError:
                await self.client.script_load(script.script)
                await connection.send_packed_command(packed)
                return await connection.read_response()
        except BaseException:
            # A half-read reply would poison the next command on this connection.
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def load_positions(self, skus: Sequence[str]) -> dict[str, Position]:
        """Stored positions of ``skus`` in one script call."""
        if not skus:
            return {}
        try:
            raw = await self._evalsha(self._load_positions, [self.keys.sku(s) for s in skus], ())
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"loading {len(skus)} positions failed: {exc}") from exc
        return {sku: position_decoder.decode(b) for sku, b in zip(skus, raw, strict=True) if b}

    async def write_batch(self, writes: Sequence[Write]) -> list[str]:
        """Compare-and-set every SKU and append its change, in script calls of WRITE_CHUNK SKUs.

        Returns the SKUs of the first chunk that conflicted (nothing of that chunk or
        later ones is written).
        """
        for start in range(0, len(writes), WRITE_CHUNK):
            chunk = writes[start : start + WRITE_CHUNK]
            keys = [self.keys.sku(w.position.sku) for w in chunk]
            keys.append(self.keys.changes())
            args: list[bytes | str | int] = [len(chunk), self.changes_maxlen]
            for w in chunk:
                args += [
                    w.expected_version,
                    w.position.version,
                    state_encoder.encode(w.position),
                    w.projection,
                    w.position.sku,
                ]
            try:
                conflicts = await self._evalsha(self._write, keys, args)
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(
                    f"writing a batch of {len(chunk)} SKUs failed: {exc}"
                ) from exc
            if conflicts:
                return [chunk[int(i) - 1].position.sku for i in conflicts]
        return []

    async def load_orders(self, order_ids: Sequence[str]) -> dict[str, OrderState]:
        """Stored states of these orders (one MGET-like pipeline)."""
        return await self._load([self.keys.order(i) for i in order_ids], order_ids, _order_decoder)

    async def load_rmas(self, rma_ids: Sequence[str]) -> dict[str, RmaState]:
        """Stored states of these RMAs."""
        return await self._load([self.keys.rma(i) for i in rma_ids], rma_ids, _rma_decoder)

    async def _load(
        self, keys: list[str], ids: Sequence[str], decoder: msgspec.msgpack.Decoder[_T]
    ) -> dict[str, _T]:
        if not keys:
            return {}
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, "s")
                raw = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"loading {len(keys)} order/RMA states failed: {exc}") from exc
        return {i: decoder.decode(b) for i, b in zip(ids, raw, strict=True) if b}

    async def save_states(self, states: Iterable[OrderState | RmaState]) -> None:
        """Store order and RMA states with the configured time to live, never rolling one back."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                count = 0
                for state in states:
                    key = (
                        self.keys.order(state.order_id)
                        if isinstance(state, OrderState)
                        else self.keys.rma(state.rma_id)
                    )
                    args: list[str | bytes | int] = [
                        state.src,
                        state_mark(state),
                        state_encoder.encode(state),
                        self.state_ttl_seconds,
                    ]
                    await self._save_state(keys=[key], args=args, client=pipe)
                    count += 1
                if count:
                    await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"saving order/RMA states failed: {exc}") from exc


class MemoryStore:
    """The same contract in memory: for tests, benchmarks and rebuild dry runs."""

    def __init__(self) -> None:
        self.positions: dict[str, bytes] = {}
        self.projections: dict[str, bytes] = {}
        self.versions: dict[str, int] = {}
        self.changes: list[tuple[str, int, bytes]] = []
        self.states: dict[str, bytes] = {}
        self.marks: dict[str, tuple[str, str]] = {}

    async def load_positions(self, skus: Sequence[str]) -> dict[str, Position]:
        """Stored positions of ``skus`` (decoded copies)."""
        return {s: position_decoder.decode(self.positions[s]) for s in skus if s in self.positions}

    async def write_batch(self, writes: Sequence[Write]) -> list[str]:
        """Compare-and-set every SKU of the batch, all or nothing."""
        conflicts = [
            w.position.sku
            for w in writes
            if self.versions.get(w.position.sku, 0) != w.expected_version
        ]
        if conflicts:
            return conflicts
        for w in writes:
            sku = w.position.sku
            self.positions[sku] = state_encoder.encode(w.position)
            self.projections[sku] = w.projection
            self.versions[sku] = w.position.version
            self.changes.append((sku, w.position.version, w.projection))
        return []

    async def load_orders(self, order_ids: Sequence[str]) -> dict[str, OrderState]:
        """Stored states of these orders."""
        found = ((i, self.states.get(f"order:{i}")) for i in order_ids)
        return {i: _order_decoder.decode(b) for i, b in found if b}

    async def load_rmas(self, rma_ids: Sequence[str]) -> dict[str, RmaState]:
        """Stored states of these RMAs."""
        found = ((i, self.states.get(f"rma:{i}")) for i in rma_ids)
        return {i: _rma_decoder.decode(b) for i, b in found if b}

    async def save_states(self, states: Iterable[OrderState | RmaState]) -> None:
        """Store order and RMA states."""
        for state in states:
            key = (
                f"order:{state.order_id}"
                if isinstance(state, OrderState)
                else f"rma:{state.rma_id}"
            )
            stored = self.marks.get(key)
            if stored is not None and stored[0] == state.src and stored[1] >= state_mark(state):
                continue
            self.marks[key] = (state.src, state_mark(state))
            self.states[key] = state_encoder.encode(state)


# Field names are part of the layout; keep them referenced so a rename is caught here.
assert (VERSION_FIELD, POSITION_FIELD, PROJECTION_FIELD) == ("v", "pos", "proj")
