"""The read model in Redis: the one adapter that reads and writes it (layout in ``layout``).

The applier writes a batch of changed SKUs at once: each SKU's position, its
served form and one change-stream entry, on condition that every SKU's stored
version is still the one the applier read (compare-and-set) and that the
model's identity marker is still the generation this store is bound to. A
version conflict means another applier wrote in between (a zombie after a
rebalance, or a stale cache); the whole batch is refused and the caller
reloads and re-applies, which the watermarks make harmless. A missing marker
means Redis lost the model: :class:`ModelLost`, nothing written.

Batch reads and writes are single script calls whose commands are packed by
hiredis in C: with tens of thousands of arguments per batch, redis-py's
pure-Python packing would cost more than the work itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, cast

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError, WatchError

from stocksync.codecs.state import OrderState, Position, RmaState
from stocksync.readmodel import core
from stocksync.store import scripts
from stocksync.store.generation import effective_namespace
from stocksync.store.layout import (
    VERSION_FIELD,
    Keys,
    decode_order,
    decode_position,
    decode_rma,
    encode_position,
    encode_state,
    reload_fields,
    state_mark,
)
from stocksync.store.protocol import ModelLost, StoreError, StoreUnavailable, Write
from stocksync.store.served import served_bytes

__all__ = ["WRITE_CHUNK", "RedisStore", "SwitchRefused"]

#: Most SKUs one script call writes: bounds how long Redis is busy with one call. The
#: compare-and-set is per SKU, so a batch written in several calls stays correct: after a
#: conflict the caller reloads, and what an earlier call wrote is skipped by its watermarks.
WRITE_CHUNK: Final = 2000
#: Most keys one state or version read asks for.
_READ_CHUNK: Final = 5000

_Errors = (RedisError, OSError)


class SwitchRefused(StoreError):
    """Another rebuild moved the generation pointer first; this one is not live."""


def _lost(namespace: str, generation: str | None) -> ModelLost:
    if generation is None:
        return ModelLost(
            f"no model is live under {namespace!r} (no identity marker): Redis lost it or"
            " it was never built"
        )
    return ModelLost(
        f"the model {generation!r} is gone from Redis (its identity marker {namespace}:model"
        " is missing or replaced): Redis lost its data, was flushed or failed over"
    )


class RedisStore:
    """The read model of one generation in Redis, and the base keys around it."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        topology: core.Topology | None = None,
        generation: str | None = None,
        changes_maxlen: int = 1_000_000,
        state_ttl_seconds: int = 90 * 86_400,
    ) -> None:
        self.client = client
        self.keys = keys
        self.topology = topology
        self._generation = generation
        self.changes_maxlen = changes_maxlen
        self.state_ttl_seconds = state_ttl_seconds
        self._scripts = {
            name: client.register_script(getattr(scripts, name))
            for name in (
                "WRITE_BATCH", "LOAD_POSITIONS", "LOAD_STATES", "SAVE_STATES",
                "READ_SERVED_PAGE", "BEAT", "LIVE_WORKERS", "RENEW_LOCK", "RELEASE_LOCK",
            )
        }

    @classmethod
    def from_url(
        cls,
        url: str,
        keys: Keys,
        *,
        client_options: Mapping[str, Any] | None = None,
        topology: core.Topology | None = None,
        generation: str | None = None,
        **options: int,
    ) -> RedisStore:
        """A store on a new connection pool for ``url`` (bytes responses, hiredis when present).

        ``client_options`` go to redis-py (credentials, TLS files, timeouts).
        """
        settings: dict[str, Any] = {
            "socket_timeout": 5,
            "socket_connect_timeout": 3,
            "health_check_interval": 10,
        }
        settings.update(client_options or {})
        client = aioredis.Redis.from_url(url, **settings)
        return cls(client, keys, topology=topology, generation=generation, **options)

    def beside(self, namespace: str, *, generation: str | None = None) -> RedisStore:
        """A store on the same connection for another namespace under the same base."""
        return RedisStore(
            self.client,
            Keys(namespace, self.keys.base),
            topology=self.topology,
            generation=generation,
            changes_maxlen=self.changes_maxlen,
            state_ttl_seconds=self.state_ttl_seconds,
        )

    @property
    def namespace(self) -> str:
        """The effective namespace this store reads and writes."""
        return self.keys.ns

    @property
    def generation(self) -> str | None:
        """The identity of the model this store is bound to (None: no model)."""
        return self._generation

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        try:
            await self.client.ping()
        except _Errors as exc:
            raise StoreUnavailable(f"Redis did not answer PING: {exc}") from exc

    async def _evalsha(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a registered script with its command packed in C; load it first if needed."""
        script = self._scripts[name]
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

    # --- generations and identity ---

    async def live_namespace(self) -> tuple[str, str | None]:
        """The live effective namespace and the generation its marker names (None: no marker)."""
        base = self.keys.base
        try:
            raw = await self.client.get(Keys(base).generation())
            namespace = effective_namespace(base, None if raw is None else _text(raw))
            marker = await self.client.get(Keys(namespace, base).model())
        except _Errors as exc:
            raise StoreUnavailable(f"reading the live generation failed: {exc}") from exc
        return namespace, None if marker is None else _text(marker)

    async def resolve(self) -> str:
        """Bind to the live generation (follow the pointer, read its marker); its namespace."""
        namespace, generation = await self.live_namespace()
        self.keys = Keys(namespace, self.keys.base)
        self._generation = generation
        return namespace

    async def begin_generation(self, generation: str) -> None:
        """Mark this namespace as generation ``generation`` (before its first write); bind to it."""
        try:
            done = await self.client.set(self.keys.model(), generation, nx=True)
            current = None if done else await self.client.get(self.keys.model())
        except _Errors as exc:
            raise StoreUnavailable(f"writing the identity marker failed: {exc}") from exc
        if not done and current is not None and _text(current) != generation:
            raise StoreError(
                f"{self.keys.ns!r} already holds generation {_text(current)!r}, not {generation!r}"
            )
        self._generation = generation

    async def model_present(self) -> bool:
        """Tell whether the model this store is bound to is still in Redis."""
        if self._generation is None:
            return False
        try:
            marker = await self.client.get(self.keys.model())
        except _Errors as exc:
            raise StoreUnavailable(f"reading the identity marker failed: {exc}") from exc
        return marker is not None and _text(marker) == self._generation

    async def write_meta(self, facts: Mapping[str, str]) -> None:
        """Record facts about this generation (who rebuilt it, from what)."""
        if not facts:
            return
        try:
            await self.client.hset(self.keys.meta(), mapping=dict(facts))  # type: ignore[arg-type]
        except _Errors as exc:
            raise StoreUnavailable(f"writing the generation's facts failed: {exc}") from exc

    async def meta(self) -> dict[str, str]:
        """The facts recorded about this generation."""
        try:
            raw = await self.client.hgetall(self.keys.meta())
        except _Errors as exc:
            raise StoreUnavailable(f"reading the generation's facts failed: {exc}") from exc
        return {_text(k): _text(v) for k, v in raw.items()}

    async def switch_to(self, generation: str, previous: str | None) -> None:
        """Make ``generation`` live unless the pointer moved from ``previous`` meanwhile.

        Then tell followers of the ``previous`` generation's stream where the model went.
        """
        base = Keys(self.keys.base)
        pointer = base.generation()
        old = Keys(effective_namespace(base.ns, previous), base.ns)
        new_ns = effective_namespace(base.ns, generation)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(pointer)
                current = await pipe.get(pointer)
                if (None if current is None else _text(current)) != previous:
                    raise SwitchRefused(
                        f"another rebuild switched the model to {current!r} meanwhile; this"
                        f" rebuild's keys stay under {new_ns}: and are not live"
                    )
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(pointer, generation)
                await pipe.execute()
            await self.client.xadd(
                old.changes(),
                reload_fields(new_ns, generation),  # type: ignore[arg-type]
                maxlen=self.changes_maxlen,
                approximate=True,
            )
        except WatchError:
            raise SwitchRefused(
                f"the generation pointer {pointer} changed during the switch; this rebuild's"
                f" keys stay under {new_ns}: and are not live"
            ) from None
        except _Errors as exc:
            raise StoreUnavailable(f"switching to generation {generation!r} failed: {exc}") from exc

    async def pointer(self) -> str | None:
        """The generation the base pointer names (None: absent)."""
        try:
            raw = await self.client.get(Keys(self.keys.base).generation())
        except _Errors as exc:
            raise StoreUnavailable(f"reading the generation pointer failed: {exc}") from exc
        return None if raw is None else _text(raw)

    # --- positions ---

    async def load_positions(self, skus: Sequence[str]) -> dict[str, Position]:
        """Stored positions of ``skus`` in one script call."""
        if not skus:
            return {}
        keys = [self.keys.model(), *(self.keys.sku(s) for s in skus)]
        try:
            raw = await self._evalsha("LOAD_POSITIONS", keys, (self._generation or "",))
        except _Errors as exc:
            raise StoreUnavailable(f"loading {len(skus)} positions failed: {exc}") from exc
        if raw[0] == scripts.LOST:
            raise _lost(self.keys.ns, self._generation)
        return {sku: decode_position(b) for sku, b in zip(skus, raw[1:], strict=True) if b}

    async def write_batch(self, writes: Sequence[Write], *, announce: bool = True) -> list[str]:
        """Compare-and-set every SKU and append its change, in script calls of WRITE_CHUNK SKUs.

        Returns the SKUs of the first chunk that conflicted (nothing of that chunk or
        later ones is written). ``announce=False`` leaves the change stream alone (a
        rebuild filling a generation nobody follows yet).
        """
        topology = self.topology
        if topology is None:
            raise StoreError("this store was opened without a topology and cannot write SKUs")
        for start in range(0, len(writes), WRITE_CHUNK):
            chunk = writes[start : start + WRITE_CHUNK]
            keys = [self.keys.sku(w.position.sku) for w in chunk]
            keys += [self.keys.changes(), self.keys.model()]
            keys += [self.keys.held(w.position.sku) for w in chunk if w.holds]
            args: list[bytes | str | int] = [
                len(chunk), self.changes_maxlen, self._generation or "", 1 if announce else 0
            ]
            for w in chunk:
                args += [
                    w.expected_version,
                    w.position.version,
                    encode_position(w.position),
                    served_bytes(w.position, topology),
                    w.position.sku,
                    ",".join(w.holds),
                ]
            try:
                conflicts = await self._evalsha("WRITE_BATCH", keys, args)
            except _Errors as exc:
                raise StoreUnavailable(
                    f"writing a batch of {len(chunk)} SKUs failed: {exc}"
                ) from exc
            if conflicts == scripts.LOST:
                raise _lost(self.keys.ns, self._generation)
            if conflicts:
                return [chunk[int(i) - 1].position.sku for i in conflicts]
        return []

    async def load_versions(self, skus: Sequence[str]) -> dict[str, int]:
        """Stored versions of ``skus`` (no identity check: for a rebuild reading the old model)."""
        found: dict[str, int] = {}
        for start in range(0, len(skus), _READ_CHUNK):
            page = skus[start : start + _READ_CHUNK]
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for sku in page:
                        pipe.hget(self.keys.sku(sku), VERSION_FIELD)
                    raw = await pipe.execute()
            except _Errors as exc:
                raise StoreUnavailable(f"loading {len(page)} versions failed: {exc}") from exc
            found.update((s, int(v)) for s, v in zip(page, raw, strict=True) if v is not None)
        return found

    async def served_page(self, cursor: int, count: int) -> tuple[int, list[bytes]]:
        """About ``count`` SKUs' served forms from SCAN ``cursor``; the next cursor (0: done)."""
        try:
            next_cursor, values = await self._evalsha(
                "READ_SERVED_PAGE", (), (cursor, self.keys.sku_pattern(), count)
            )
        except _Errors as exc:
            raise StoreUnavailable(f"reading a page of served SKUs failed: {exc}") from exc
        return int(next_cursor), [v for v in cast("list[bytes | None]", values) if v]

    async def any_sku(self) -> bool:
        """Whether the bound generation holds any SKU (SCAN until the first one)."""
        cursor = 0
        try:
            while True:
                cursor, found = await self.client.scan(
                    cursor, match=self.keys.sku_pattern(), count=1000
                )
                if found:
                    return True
                if cursor == 0:
                    return False
        except _Errors as exc:
            raise StoreUnavailable(f"looking for SKUs failed: {exc}") from exc

    async def sku_count(self) -> int:
        """How many SKUs the bound generation holds (a full SCAN: for operator commands)."""
        count = 0
        try:
            async for _ in self.client.scan_iter(match=self.keys.sku_pattern(), count=5000):
                count += 1
        except _Errors as exc:
            raise StoreUnavailable(f"counting SKUs failed: {exc}") from exc
        return count

    # --- order and RMA states ---

    async def load_orders(self, order_ids: Sequence[str]) -> dict[str, OrderState]:
        """Stored states of these orders (one script call)."""
        raw = await self._load_states([self.keys.order(i) for i in order_ids])
        return {i: decode_order(b) for i, b in zip(order_ids, raw, strict=True) if b}

    async def load_rmas(self, rma_ids: Sequence[str]) -> dict[str, RmaState]:
        """Stored states of these RMAs (one script call)."""
        raw = await self._load_states([self.keys.rma(i) for i in rma_ids])
        return {i: decode_rma(b) for i, b in zip(rma_ids, raw, strict=True) if b}

    async def _load_states(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            raw = await self._evalsha(
                "LOAD_STATES", [self.keys.model(), *keys], (self._generation or "",)
            )
        except _Errors as exc:
            raise StoreUnavailable(f"loading {len(keys)} order/RMA states failed: {exc}") from exc
        if raw[0] == scripts.LOST:
            raise _lost(self.keys.ns, self._generation)
        return cast("list[bytes | None]", raw[1:])

    async def save_states(self, states: Iterable[OrderState | RmaState]) -> None:
        """Store order and RMA states with the configured time to live, never rolling one back."""
        items = list(states)
        for start in range(0, len(items), WRITE_CHUNK):
            chunk = items[start : start + WRITE_CHUNK]
            keys = [self.keys.model()]
            args: list[str | bytes | int] = [self._generation or "", self.state_ttl_seconds]
            for state in chunk:
                keys.append(
                    self.keys.order(state.order_id)
                    if isinstance(state, OrderState)
                    else self.keys.rma(state.rma_id)
                )
                args += [state.src, state_mark(state), encode_state(state)]
            try:
                written = await self._evalsha("SAVE_STATES", keys, args)
            except _Errors as exc:
                raise StoreUnavailable(f"saving order/RMA states failed: {exc}") from exc
            if written == scripts.LOST:
                raise _lost(self.keys.ns, self._generation)

    # --- the change stream (API replicas follow it) ---

    async def changes_info(self) -> dict[str, Any] | None:
        """XINFO STREAM of the change stream, or None when it does not exist."""
        try:
            info: dict[str, Any] = await self.client.xinfo_stream(self.keys.changes())
            return info
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise StoreUnavailable(f"reading the change stream's info failed: {exc}") from exc
        except _Errors as exc:
            raise StoreUnavailable(f"reading the change stream's info failed: {exc}") from exc

    async def read_changes(
        self, after: str, count: int, block_ms: int | None
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Change entries after id ``after`` (decode each with ``layout.decode_change``)."""
        try:
            reply = cast(
                "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
                await self.client.xread({self.keys.changes(): after}, count=count, block=block_ms),
            )
        except _Errors as exc:
            raise StoreUnavailable(f"reading the change stream failed: {exc}") from exc
        return [entry for _name, entries in reply for entry in entries]

    async def first_change_after(self, after: str) -> bytes | None:
        """The id of the oldest change entry after ``after``, or None."""
        try:
            found = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]",
                await self.client.xrange(self.keys.changes(), min=f"({after}", count=1),
            )
            return found[0][0] if found else None
        except _Errors as exc:
            raise StoreUnavailable(f"reading the change stream failed: {exc}") from exc

    async def server_time(self) -> float:
        """Redis's clock, in seconds since the epoch."""
        try:
            seconds, micros = await self.client.time()
        except _Errors as exc:
            raise StoreUnavailable(f"reading Redis's clock failed: {exc}") from exc
        return seconds + micros / 1e6

    # --- workers and the rebuild lock (base keys) ---

    async def beat(self, worker_id: str, stale_after: float) -> None:
        """Record that ``worker_id`` is running (its heartbeat, scored by Redis's clock)."""
        try:
            await self._evalsha("BEAT", (self.keys.workers(),), (worker_id, int(stale_after)))
        except _Errors as exc:
            raise StoreUnavailable(f"recording a heartbeat failed: {exc}") from exc

    async def forget_worker(self, worker_id: str) -> None:
        """Remove ``worker_id``'s heartbeat (a clean stop)."""
        try:
            await self.client.zrem(self.keys.workers(), worker_id)
        except _Errors as exc:
            raise StoreUnavailable(f"removing a heartbeat failed: {exc}") from exc

    async def live_workers(self, fresh_for: float) -> list[str]:
        """Workers whose last heartbeat is at most ``fresh_for`` seconds old."""
        try:
            raw = await self._evalsha("LIVE_WORKERS", (self.keys.workers(),), (int(fresh_for),))
        except _Errors as exc:
            raise StoreUnavailable(f"reading heartbeats failed: {exc}") from exc
        return sorted(_text(r) for r in raw)

    async def take_rebuild_lock(self, owner: str, ttl: float) -> bool:
        """Take the rebuild lock for ``ttl`` seconds unless someone holds it; tell if taken."""
        try:
            taken = await self.client.set(
                self.keys.rebuild_lock(), owner, nx=True, px=int(ttl * 1000)
            )
        except _Errors as exc:
            raise StoreUnavailable(f"taking the rebuild lock failed: {exc}") from exc
        return bool(taken)

    async def renew_rebuild_lock(self, owner: str, ttl: float) -> bool:
        """Extend the rebuild lock ``owner`` holds; False when it no longer holds it."""
        try:
            done = await self._evalsha(
                "RENEW_LOCK", (self.keys.rebuild_lock(),), (owner, int(ttl * 1000))
            )
        except _Errors as exc:
            raise StoreUnavailable(f"renewing the rebuild lock failed: {exc}") from exc
        return bool(done)

    async def release_rebuild_lock(self, owner: str) -> None:
        """Give the rebuild lock back if ``owner`` holds it."""
        try:
            await self._evalsha("RELEASE_LOCK", (self.keys.rebuild_lock(),), (owner,))
        except _Errors as exc:
            raise StoreUnavailable(f"releasing the rebuild lock failed: {exc}") from exc


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
