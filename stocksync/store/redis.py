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

On a Redis Cluster (a :class:`redis.asyncio.RedisCluster` client, see
:func:`open_client`) the keys are cut into shards (``layout``): a batch is
grouped by shard and each group is one script call on its shard's node, the
groups of all nodes in flight at once; the compare-and-set is per SKU, so a batch
written in several calls stays correct, as with WRITE_CHUNK. Each shard has its
change stream and its copy of the identity marker; SCAN runs on every primary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    WatchError,
)

from stocksync.codecs.state import OrderState, Position, RmaState
from stocksync.compat import redis as compat_redis
from stocksync.readmodel import core
from stocksync.store import scripts
from stocksync.store.acked import evalsha_acked
from stocksync.store.generation import effective_namespace
from stocksync.store.layout import (
    CLUSTER_SHARDS,
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
from stocksync.store.routed import evalsha_routed, evalsha_routed_all
from stocksync.store.served import served_bytes

__all__ = ["WRITE_CHUNK", "Client", "RedisStore", "SwitchRefused", "open_client"]

#: Most SKUs one script call writes: bounds how long Redis is busy with one call. The
#: compare-and-set is per SKU, so a batch written in several calls stays correct: after a
#: conflict the caller reloads, and what an earlier call wrote is skipped by its watermarks.
WRITE_CHUNK: Final = 2000
#: Most keys one state or version read asks for.
_READ_CHUNK: Final = 5000

_Errors = (RedisError, RedisClusterException, OSError)

#: A client of one Redis or of a Redis Cluster.
Client = aioredis.Redis | RedisCluster

compat_redis.closed_transport_is_a_connection_error()
_T = TypeVar("_T")
#: Bits of a served_page cursor per node of a cluster (a node's SCAN cursor, plus one).
_CURSOR_BITS: Final = 65
#: Connections per cluster node for everything but the change-stream readers: redis-py's
#: default, which holds, loads and the lag monitor have always had.
_TRAFFIC_CONNECTIONS: Final = 100


def open_client(url: str, *, cluster: bool = False, **options: Any) -> Client:
    """A client for ``url``: one Redis, or (``cluster``) the Redis Cluster that node is in.

    The cluster client finds the other nodes and follows MOVED and ASK redirections
    (slots moving during a resharding, a replica promoted by a failover).
    """
    if cluster:
        options.pop("health_check_interval", None)  # not a cluster client option
        # Each command takes a connection of its node's pool for as long as it runs, and
        # past ``max_connections`` fails at once (MaxConnectionsError, no waiting). A
        # follower of the model (API replica, feed) keeps one XREAD BLOCK per shard in
        # flight all the time, and all 12 shards may be on one node (a one-master
        # cluster, or a resharding that moved them together): the pool holds those on
        # top of what the rest of the traffic always had, so they never crowd it out.
        options.setdefault("max_connections", CLUSTER_SHARDS + _TRAFFIC_CONNECTIONS)
        # A command that meets a dead node, CLUSTERDOWN or an unserved slot is sent
        # again (up to 3 times) after the client re-read the slot map from a node that
        # answers, so a failover costs the callers a few failed calls, not a restart;
        # past that the caller's own backoff (worker, API sync) takes over.
        options.setdefault(
            "retry", Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3)
        )
        return RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)




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
        client: Client,
        keys: Keys,
        *,
        topology: core.Topology | None = None,
        generation: str | None = None,
        changes_maxlen: int = 1_000_000,
        state_ttl_seconds: int = 90 * 86_400,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        if self.cluster and keys.shards == 1:
            keys = Keys(keys.ns, keys.base, shards=CLUSTER_SHARDS)
        self.keys = keys
        self.topology = topology
        self._generation = generation
        self.changes_maxlen = changes_maxlen
        self.state_ttl_seconds = state_ttl_seconds
        #: Replicas that must acknowledge every batch and state write (``WAIT``, see
        #: :mod:`stocksync.store.acked`); 0: the master's answer is enough.
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._scripts = {
            name: client.register_script(getattr(scripts, name))
            for name in (
                "WRITE_BATCH", "LOAD_POSITIONS", "LOAD_STATES", "SAVE_STATES",
                "READ_SERVED_PAGE", "BEAT", "LIVE_WORKERS", "RENEW_LOCK", "RELEASE_LOCK",
                "SWITCH_POINTER",
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
        cluster: bool = False,
        **options: int,
    ) -> RedisStore:
        """A store on a new connection pool for ``url`` (bytes responses, hiredis when present).

        ``client_options`` go to redis-py (credentials, TLS files, timeouts); with
        ``cluster``, ``url`` names one node of a Redis Cluster.
        """
        settings: dict[str, Any] = {
            "socket_timeout": 5,
            "socket_connect_timeout": 3,
            "health_check_interval": 10,
        }
        settings.update(client_options or {})
        client = open_client(url, cluster=cluster, **settings)
        return cls(client, keys, topology=topology, generation=generation, **options)

    def beside(self, namespace: str, *, generation: str | None = None) -> RedisStore:
        """A store on the same connection for another namespace under the same base."""
        return RedisStore(
            self.client,
            self.keys.beside(namespace),
            topology=self.topology,
            generation=generation,
            changes_maxlen=self.changes_maxlen,
            state_ttl_seconds=self.state_ttl_seconds,
            wait_replicas=self.wait_replicas,
            wait_timeout_ms=self.wait_timeout_ms,
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

    async def _each(self, calls: Iterable[Awaitable[_T]]) -> list[_T]:
        """Await every call at once (the cluster's nodes work in parallel); first error wins."""
        if isinstance(self.client, RedisCluster):
            # Concurrent first commands on a client that has not read the slots yet break
            # its fresh connections (redis-py 8.1): read them first (once; then a no-op).
            await self.client.initialize()
        return list(await asyncio.gather(*calls))

    async def _evalsha(
        self, name: str, keys: Sequence[str], args: Sequence[Any], *, acked: bool = False
    ) -> Any:
        """Run a registered script with its command packed in C; load it first if needed.

        ``acked``: a write that ``wait_replicas`` replicas must have before it counts.
        """
        script = self._scripts[name]
        if acked and self.wait_replicas:
            return await evalsha_acked(
                self.client, script, keys, args,
                replicas=self.wait_replicas, timeout_ms=self.wait_timeout_ms,
            )
        if self.cluster:
            # Routed by the keys' slot (one slot per call: the keys share a shard tag).
            return await evalsha_routed(cast("RedisCluster", self.client), script, keys, args)
        packed = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        pool = cast("aioredis.Redis", self.client).connection_pool
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

    async def _evalsha_each(
        self,
        name: str,
        calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
        *,
        acked: bool = False,
    ) -> list[Any]:
        """Several calls of one registered script at once (one per shard), their replies
        in order: on a cluster each node's calls go pipelined on one of its connections."""
        if self.cluster and not (acked and self.wait_replicas):
            client = cast("RedisCluster", self.client)
            return await evalsha_routed_all(client, self._scripts[name], calls)
        return await self._each(self._evalsha(name, k, a, acked=acked) for k, a in calls)

    # --- generations and identity ---

    async def _markers(self, keys: Keys) -> list[str | None]:
        """The identity marker of every shard of ``keys``."""
        raw = await self._each(self.client.get(keys.model(i)) for i in range(keys.shards))
        return [None if r is None else _text(r) for r in raw]

    async def live_namespace(self) -> tuple[str, str | None]:
        """The live effective namespace and the generation its marker names (None: no marker).

        On a cluster the marker must be in every shard: one node that lost its data
        lost a part of the model.
        """
        base = self.keys.base
        try:
            raw = await self.client.get(self.keys.generation())
            namespace = effective_namespace(base, None if raw is None else _text(raw))
            markers = await self._markers(self.keys.beside(namespace))
        except _Errors as exc:
            raise StoreUnavailable(f"reading the live generation failed: {exc}") from exc
        marker = markers[0]
        return namespace, marker if all(m == marker for m in markers) else None

    async def resolve(self) -> str:
        """Bind to the live generation (follow the pointer, read its marker); its namespace."""
        namespace, generation = await self.live_namespace()
        self.keys = self.keys.beside(namespace)
        self._generation = generation
        return namespace

    async def begin_generation(self, generation: str) -> None:
        """Mark this namespace as generation ``generation`` (before its first write); bind to it."""
        keys = self.keys
        try:
            await self._each(
                self.client.set(keys.model(i), generation, nx=True) for i in range(keys.shards)
            )
            markers = await self._markers(keys)
        except _Errors as exc:
            raise StoreUnavailable(f"writing the identity marker failed: {exc}") from exc
        for current in markers:
            if current is not None and current != generation:
                raise StoreError(
                    f"{keys.ns!r} already holds generation {current!r}, not {generation!r}"
                )
        self._generation = generation

    async def model_present(self) -> bool:
        """Tell whether the model this store is bound to is still in Redis."""
        if self._generation is None:
            return False
        try:
            markers = await self._markers(self.keys)
        except _Errors as exc:
            raise StoreUnavailable(f"reading the identity marker failed: {exc}") from exc
        return all(m == self._generation for m in markers)

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
        old = self.keys.beside(effective_namespace(base.ns, previous))
        new_ns = effective_namespace(base.ns, generation)
        if self.cluster:
            await self._switch_by_script(generation, previous, old, new_ns)
            return
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

    async def _switch_by_script(
        self, generation: str, previous: str | None, old: Keys, new_ns: str
    ) -> None:
        """switch_to on a cluster: a compare-and-set script on the pointer, then every stream."""
        pointer = old.generation()
        try:
            current = await self._evalsha(
                "SWITCH_POINTER", (pointer,), (previous or "", generation)
            )
            if current != 1:
                raise SwitchRefused(
                    f"another rebuild switched the model to {current!r} meanwhile; this"
                    f" rebuild's keys stay under {new_ns}: and are not live"
                )
            await self._each(
                self.client.xadd(
                    old.changes(i),
                    reload_fields(new_ns, generation),  # type: ignore[arg-type]
                    maxlen=self.changes_maxlen,
                    approximate=True,
                )
                for i in range(old.shards)
            )
        except _Errors as exc:
            raise StoreUnavailable(f"switching to generation {generation!r} failed: {exc}") from exc

    async def pointer(self) -> str | None:
        """The generation the base pointer names (None: absent)."""
        try:
            raw = await self.client.get(self.keys.generation())
        except _Errors as exc:
            raise StoreUnavailable(f"reading the generation pointer failed: {exc}") from exc
        return None if raw is None else _text(raw)

    # --- positions ---

    def _by_shard(self, ids: Sequence[str]) -> list[list[int]]:
        """Indexes of ``ids`` per shard (one group on one Redis), in order, empty ones left out."""
        if self.keys.shards == 1:
            return [list(range(len(ids)))] if ids else []
        groups: dict[int, list[int]] = {}
        shard_of = self.keys.shard_of
        for i, entity in enumerate(ids):
            groups.setdefault(shard_of(entity), []).append(i)
        return list(groups.values())

    async def load_positions(self, skus: Sequence[str]) -> dict[str, Position]:
        """Stored positions of ``skus`` in one script call (per shard)."""
        if not skus:
            return {}
        groups = [[skus[i] for i in g] for g in self._by_shard(skus)]
        calls = [
            ([self.keys.model(self.keys.shard_of(g[0])), *map(self.keys.sku, g)],
             (self._generation or "",))
            for g in groups
        ]
        try:
            replies = await self._evalsha_each("LOAD_POSITIONS", calls)
        except _Errors as exc:
            raise StoreUnavailable(f"loading {len(skus)} positions failed: {exc}") from exc
        found: dict[str, Position] = {}
        for group, raw in zip(groups, replies, strict=True):
            if raw[0] == scripts.LOST:
                raise _lost(self.keys.ns, self._generation)
            found.update(
                (sku, decode_position(b)) for sku, b in zip(group, raw[1:], strict=True) if b
            )
        return found

    async def write_batch(self, writes: Sequence[Write], *, announce: bool = True) -> list[str]:
        """Compare-and-set every SKU and append its change, in script calls of WRITE_CHUNK SKUs.

        Returns the SKUs of the first chunk that conflicted (nothing of that chunk's
        shard or of later chunks is written). ``announce=False`` leaves the change
        stream alone (a rebuild filling a generation nobody follows yet). On a
        cluster each chunk is one call per shard, all shards at once.
        """
        if self.topology is None:
            raise StoreError("this store was opened without a topology and cannot write SKUs")
        for start in range(0, len(writes), WRITE_CHUNK):
            chunk = writes[start : start + WRITE_CHUNK]
            shards = self._by_shard([w.position.sku for w in chunk])
            groups = [[chunk[i] for i in g] for g in shards]
            try:
                replies = await self._evalsha_each(
                    "WRITE_BATCH", [self._write_call(g, announce) for g in groups], acked=True
                )
            except _Errors as exc:
                raise StoreUnavailable(
                    f"writing a batch of {len(chunk)} SKUs failed: {exc}"
                ) from exc
            if any(r == scripts.LOST for r in replies):
                raise _lost(self.keys.ns, self._generation)
            conflicts = [
                group[int(i) - 1].position.sku
                for group, reply in zip(groups, replies, strict=True)
                for i in reply
            ]
            if conflicts:
                return conflicts
        return []

    def _write_call(self, group: list[Write], announce: bool) -> tuple[list[str], list[Any]]:
        """The WRITE_BATCH call for SKUs of one shard (it returns LOST, or the 1-based
        indexes of the SKUs whose version conflicted)."""
        topology = cast("core.Topology", self.topology)
        shard = self.keys.shard_of(group[0].position.sku)
        keys = [self.keys.sku(w.position.sku) for w in group]
        keys += [self.keys.changes(shard), self.keys.model(shard)]
        keys += [self.keys.held(w.position.sku) for w in group if w.holds]
        args: list[bytes | str | int] = [
            len(group), self.changes_maxlen, self._generation or "", 1 if announce else 0
        ]
        for w in group:
            args += [
                w.expected_version,
                w.position.version,
                encode_position(w.position),
                served_bytes(w.position, topology),
                w.position.sku,
                ",".join(w.holds),
                w.correlation_id or "",
            ]
        return keys, args

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

    def _primaries(self) -> list[ClusterNode]:
        """The cluster's primaries, in a stable order (by name)."""
        client = cast("RedisCluster", self.client)
        return sorted(client.get_primaries(), key=lambda node: node.name)

    async def _served_from(self, node: ClusterNode | None, cursor: int, count: int) -> Any:
        args = (cursor, self.keys.sku_pattern(), count)
        if node is None:
            return await self._evalsha("READ_SERVED_PAGE", (), args)
        client = cast("RedisCluster", self.client)
        script = self._scripts["READ_SERVED_PAGE"]
        try:
            reply = await client.execute_command(
                "EVALSHA", script.sha, 0, *args, target_nodes=node
            )
        except NoScriptError:
            await client.script_load(script.script)
            reply = await client.execute_command(
                "EVALSHA", script.sha, 0, *args, target_nodes=node
            )
        if isinstance(reply, dict):  # the cluster client answers per node
            (reply,) = reply.values()
        return reply

    async def served_page(self, cursor: int, count: int) -> tuple[int, list[bytes]]:
        """About ``count`` SKUs' served forms from SCAN ``cursor``; the next cursor (0: done).

        On a cluster one page is a SCAN page of every primary not yet done, read in
        parallel; the cursor packs each primary's SCAN cursor.
        """
        try:
            if not self.cluster:
                next_cursor, values = await self._served_from(None, cursor, count)
                return int(next_cursor), [v for v in cast("list[bytes | None]", values) if v]
            nodes = self._primaries()
            mask = (1 << _CURSOR_BITS) - 1
            # Per node: 0 done, else its SCAN cursor plus one; cursor 0 starts every node.
            states = [1] * len(nodes) if cursor == 0 else [
                (cursor >> (_CURSOR_BITS * i)) & mask for i in range(len(nodes))
            ]
            todo = [i for i, state in enumerate(states) if state]
            replies = await self._each(
                self._served_from(nodes[i], states[i] - 1, count) for i in todo
            )
        except _Errors as exc:
            raise StoreUnavailable(f"reading a page of served SKUs failed: {exc}") from exc
        found: list[bytes] = []
        for i, (next_cursor, values) in zip(todo, replies, strict=True):
            states[i] = 0 if int(next_cursor) == 0 else int(next_cursor) + 1
            found += [v for v in cast("list[bytes | None]", values) if v]
        packed = sum(state << (_CURSOR_BITS * i) for i, state in enumerate(states))
        return packed, found

    async def _scan_nodes(self) -> list[ClusterNode | None]:
        return [None] if not self.cluster else list(self._primaries())

    async def any_sku(self) -> bool:
        """Whether the bound generation holds any SKU (SCAN until the first one)."""
        try:
            for node in await self._scan_nodes():
                cursor = 0
                while True:
                    cursor, found = await self._scan(node, cursor, 1000)
                    if found:
                        return True
                    if cursor == 0:
                        break
        except _Errors as exc:
            raise StoreUnavailable(f"looking for SKUs failed: {exc}") from exc
        return False

    async def sku_count(self) -> int:
        """How many SKUs the bound generation holds (a full SCAN: for operator commands)."""
        count = 0
        try:
            for node in await self._scan_nodes():
                cursor = 0
                while True:
                    cursor, found = await self._scan(node, cursor, 5000)
                    count += len(found)
                    if cursor == 0:
                        break
        except _Errors as exc:
            raise StoreUnavailable(f"counting SKUs failed: {exc}") from exc
        return count

    async def _scan(
        self, node: ClusterNode | None, cursor: int, count: int
    ) -> tuple[int, list[Any]]:
        if node is None:
            return cast(
                "tuple[int, list[Any]]",
                await self.client.scan(cursor, match=self.keys.sku_pattern(), count=count),
            )
        client = cast("RedisCluster", self.client)
        reply = await client.execute_command(
            "SCAN", cursor, "MATCH", self.keys.sku_pattern(), "COUNT", count, target_nodes=node
        )
        next_cursor, found = reply
        if isinstance(next_cursor, dict):  # the cluster client gives the cursor per node
            (next_cursor,) = next_cursor.values()
        return int(next_cursor), list(found)

    # --- order and RMA states ---

    async def load_orders(self, order_ids: Sequence[str]) -> dict[str, OrderState]:
        """Stored states of these orders (one script call per shard)."""
        raw = await self._load_states(order_ids, self.keys.order)
        return {i: decode_order(b) for i, b in zip(order_ids, raw, strict=True) if b}

    async def load_rmas(self, rma_ids: Sequence[str]) -> dict[str, RmaState]:
        """Stored states of these RMAs (one script call per shard)."""
        raw = await self._load_states(rma_ids, self.keys.rma)
        return {i: decode_rma(b) for i, b in zip(rma_ids, raw, strict=True) if b}

    async def _load_states(self, ids: Sequence[str], key: Any) -> list[bytes | None]:
        if not ids:
            return []
        groups = self._by_shard(ids)
        try:
            replies = await self._evalsha_each("LOAD_STATES", [
                ([self.keys.model(self.keys.shard_of(ids[g[0]])), *(key(ids[i]) for i in g)],
                 (self._generation or "",))
                for g in groups
            ])
        except _Errors as exc:
            raise StoreUnavailable(f"loading {len(ids)} order/RMA states failed: {exc}") from exc
        found: list[bytes | None] = [None] * len(ids)
        for group, raw in zip(groups, replies, strict=True):
            if raw[0] == scripts.LOST:
                raise _lost(self.keys.ns, self._generation)
            for i, value in zip(group, raw[1:], strict=True):
                found[i] = value
        return found

    async def save_states(self, states: Iterable[OrderState | RmaState]) -> None:
        """Store order and RMA states with the configured time to live, never rolling one back."""
        items = list(states)
        for start in range(0, len(items), WRITE_CHUNK):
            chunk = items[start : start + WRITE_CHUNK]
            ids = [s.order_id if isinstance(s, OrderState) else s.rma_id for s in chunk]
            groups = self._by_shard(ids)
            try:
                replies = await self._evalsha_each(
                    "SAVE_STATES",
                    [self._save_call([chunk[i] for i in g], ids[g[0]]) for g in groups],
                    acked=True,
                )
            except _Errors as exc:
                raise StoreUnavailable(f"saving order/RMA states failed: {exc}") from exc
            if any(written == scripts.LOST for written in replies):
                raise _lost(self.keys.ns, self._generation)

    def _save_call(
        self, group: list[OrderState | RmaState], first_id: str
    ) -> tuple[list[str], list[Any]]:
        """The SAVE_STATES call for states of one shard."""
        keys = [self.keys.model(self.keys.shard_of(first_id))]
        args: list[str | bytes | int] = [self._generation or "", self.state_ttl_seconds]
        for state in group:
            keys.append(
                self.keys.order(state.order_id)
                if isinstance(state, OrderState)
                else self.keys.rma(state.rma_id)
            )
            args += [state.src, state_mark(state), encode_state(state)]
        return keys, args

    # --- the change stream (API replicas follow it) ---

    async def changes_info(self, shard: int = 0) -> dict[str, Any] | None:
        """XINFO STREAM of a shard's change stream, or None when it does not exist."""
        try:
            info: dict[str, Any] = await self.client.xinfo_stream(self.keys.changes(shard))
            return info
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise StoreUnavailable(f"reading the change stream's info failed: {exc}") from exc
        except _Errors as exc:
            raise StoreUnavailable(f"reading the change stream's info failed: {exc}") from exc

    async def read_changes(
        self, after: str, count: int, block_ms: int | None, shard: int = 0
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """A shard's change entries after id ``after`` (decode with ``layout.decode_change``)."""
        try:
            reply = cast(
                "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
                await self.client.xread(
                    {self.keys.changes(shard): after}, count=count, block=block_ms
                ),
            )
        except _Errors as exc:
            raise StoreUnavailable(f"reading the change stream failed: {exc}") from exc
        return [entry for _name, entries in reply for entry in entries]

    async def first_change_after(self, after: str, shard: int = 0) -> bytes | None:
        """The id of the oldest entry of a shard's change stream after ``after``, or None."""
        try:
            found = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]",
                await self.client.xrange(self.keys.changes(shard), min=f"({after}", count=1),
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
