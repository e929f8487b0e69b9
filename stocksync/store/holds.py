"""Checkout holds in Redis: grant, extend, release and convert them, each in one script.

Layout (base namespace, shared by every generation, so a rebuild keeps them;
the scripts are in :mod:`stocksync.store.scripts`)::

    {base}:hold:{HOLD_ID}  hash  fp     what makes a retry the same hold (channel and lines)
                                 ch     channel
                                 st     held | partial | released | converted
                                 exp    expiry, ms since the epoch (Redis time)
                                 lines  msgpack [[sku, requested, held], ...] (StoredLine)
                                 end    when it was released or converted (ms)
                                 ord    the order that converted it
                                 (the key expires api.holds' memory after the hold ends)
    {base}:held:{SKU}      hash  v              hold version: +1 for every line change
                                 h:{HOLD_ID}    msgpack [channel, qty, expires_ms]
                                 t:{CHANNEL}    sum of the qty of the lines on the channel
                                 x              the hold version the sums and index are
                                                exact at (see below)
    {base}:held-exp:{SKU}  zset  the hold ids of the lines, scored by expires_ms

The sums and the expiry index make every change cost what it changes: a grant
reads one sum, pruning takes only the expired ids from the index. A held hash
without them (written before they existed, or during a rolling upgrade by a
process of that code, which moves ``v`` but not ``x``) gets them built from its
lines by the first script that opens it (``open_held`` in
:mod:`stocksync.store.scripts`): the upgrade migrates lazily, SKU by SKU.

A hold that is past ``exp`` is ``expired`` without anything being written:
every script judges lines by Redis ``TIME`` and prunes the expired ones of the
SKUs it touches (each prune counts as a change of the hold version, see
:func:`stocksync.readmodel.holds.served_version`).

Every script is one atomic call. The grant reads the channel's pre-hold
available figure from the SKU hash the applier wrote (live generation), the
SKU's active lines, and grants or refuses, so what is granted never exceeds
what the channel had at that moment, whatever the number of API processes.
A hold with several SKUs is decided in the same call for all of its lines, so
an all-or-nothing hold is never seen half granted. Every change to a SKU's
lines appends a ``held`` entry (:class:`~stocksync.codecs.holds.HeldDelta`: what
changed) to the live change stream, which is how every API replica learns of it.

The applier converts holds in its own batch script (see
:data:`~stocksync.store.scripts.WRITE_BATCH`), which deletes the hold's line of a SKU in
the call that writes the order's reservation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, cast

import hiredis
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from stocksync.codecs.holds import HoldStatus, StoredLine, stored_lines_decoder
from stocksync.store import scripts
from stocksync.store.acked import call_acked
from stocksync.store.layout import Keys
from stocksync.store.multiplex import Multiplexed, NoScript
from stocksync.store.protocol import StoreUnavailable
from stocksync.store.routed import evalsha_routed
from stocksync.store.sharded_holds import ShardedHolds

__all__ = ["MEMORY_MS", "Created", "HoldRecord", "HoldStore"]

#: How long a hold is remembered after it ends (api-v1: 24 hours).
MEMORY_MS: Final = 86_400_000
_ACTIVE: Final = frozenset({"held", "partial"})


class HoldRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A hold as stored, with the Redis time it was read at."""

    hold_id: str
    channel: str
    stored_status: str
    expires_ms: int
    lines: list[StoredLine]
    now_ms: int

    @property
    def status(self) -> HoldStatus:
        """The status a client sees: an active hold past its expiry is ``expired``."""
        if self.stored_status in _ACTIVE:
            if self.expires_ms <= self.now_ms:
                return "expired"
            return "held" if self.stored_status == "held" else "partial"
        return "converted" if self.stored_status == "converted" else "released"

    @property
    def active(self) -> bool:
        """Whether the hold still counts against availability."""
        return self.stored_status in _ACTIVE and self.expires_ms > self.now_ms


class Created(msgspec.Struct, frozen=True, kw_only=True):
    """What a create call found: a new hold, the existing one, a conflict or a refusal."""

    outcome: Literal["created", "exists", "conflict", "short"]
    now_ms: int
    record: HoldRecord | None = None
    #: Per line, what the channel had available (``short`` only).
    available: list[int] = msgspec.field(default_factory=list)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def record_of(hold_id: str, now: int, fields: Sequence[Any]) -> HoldRecord:
    """A hold's record from the fields a hold script returns: status, expiry, lines, channel."""
    st, exp, lines, channel = fields
    return HoldRecord(
        hold_id=hold_id,
        channel=_text(channel),
        stored_status=_text(st),
        expires_ms=int(exp),
        lines=stored_lines_decoder.decode(lines),
        now_ms=now,
    )


class HoldStore:
    """Holds in Redis for the API (and conversion for the order translator)."""

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        live: Callable[[], Keys],
        *,
        memory_ms: int = MEMORY_MS,
        changes_maxlen: int = 1_000_000,
        timeout: float = 5.0,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self.client = client
        #: The live generation's keys (SKU hashes, change stream) as the caller follows
        #: them; holds are under their base.
        self.live = live
        self.memory_ms = memory_ms
        self.changes_maxlen = changes_maxlen
        self._create = client.register_script(scripts.CREATE_HOLD)
        self._get = client.register_script(scripts.GET_HOLD)
        self._release = client.register_script(scripts.RELEASE_HOLD)
        self._extend = client.register_script(scripts.EXTEND_HOLD)
        self._convert = client.register_script(scripts.CONVERT_HOLD)
        self._held_page = client.register_script(scripts.READ_HELD_PAGE)
        self._held_one = client.register_script(scripts.READ_HELD)
        #: Most seconds one call may take.
        self.timeout = timeout
        #: Replicas that acknowledge each write (``WAIT``) before it counts; see
        #: stocksync.store.acked.
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        # Every hold call of the process on one pipelined connection (see
        # stocksync.store.multiplex): redis-py's command path and a connection per
        # call cost about as much CPU as the rest of a hold. A WAIT may take its
        # whole timeout before it answers, on top of the call's own.
        self._pipe = (
            None if isinstance(client, aioredis.RedisCluster)
            else Multiplexed(
                client, timeout + (wait_timeout_ms / 1000 if wait_replicas else 0.0)
            )
        )
        #: On a Redis Cluster a hold is decided shard group by shard group (and
        #: ``wait_replicas`` replicas acknowledge each step); see that module.
        self._sharded = (
            ShardedHolds(
                client, live, memory_ms=memory_ms, changes_maxlen=changes_maxlen,
                wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms,
            )
            if isinstance(client, aioredis.RedisCluster) else None
        )

    async def close(self) -> None:
        """Close the connection of the hold calls."""
        if self._pipe is not None:
            await self._pipe.close()

    async def _call(
        self, script: Any, keys: Sequence[str], args: Sequence[Any], *, writes: bool = True
    ) -> Any:
        """Run a registered script in one round trip; load it first if Redis lacks it.

        A script that ``writes`` counts once ``wait_replicas`` replicas have its
        writes (one Redis; else StoreUnavailable, and the caller answers as for
        Redis not answering). A hold's keys span shards, so on a cluster only the
        single-key reading scripts come here.
        """
        pipe = self._pipe
        if pipe is None:
            # Routed by slot. A hold's keys span shards, so on a cluster only the
            # single-key scripts (reading a hold) run; the others fail as unavailable.
            try:
                if isinstance(self.client, aioredis.RedisCluster):
                    return await evalsha_routed(self.client, script, keys, args)
                return await script(keys=keys, args=args)
            except (RedisError, RedisClusterException, OSError) as exc:
                raise StoreUnavailable(f"a hold script failed: {exc}") from exc
        packed = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        acked = writes and self.wait_replicas > 0

        async def send() -> Any:
            if acked:
                return await call_acked(
                    pipe, packed, replicas=self.wait_replicas, timeout_ms=self.wait_timeout_ms
                )
            return await pipe.call(packed)

        try:
            return await send()
        except NoScript:
            try:
                await self.client.script_load(script.script)
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(f"loading a hold script failed: {exc}") from exc
            return await send()

    async def create(
        self,
        hold_id: str,
        channel: str,
        lines: Sequence[tuple[str, int]],
        *,
        fingerprint: str,
        ttl_ms: int,
        partial: bool,
    ) -> Created:
        """Grant a new hold in one atomic call, or find the one ``hold_id`` names."""
        if self._sharded is not None:
            return await self._sharded.create(
                hold_id, channel, lines, fingerprint=fingerprint, ttl_ms=ttl_ms, partial=partial
            )
        live = self.live()
        keys = [live.hold(hold_id), live.changes()]
        args: list[str | int] = [
            fingerprint,
            channel,
            ttl_ms,
            1 if partial else 0,
            self.memory_ms,
            self.changes_maxlen,
            hold_id,
            len(lines),
        ]
        for sku, qty in lines:
            keys += [live.sku(sku), live.held(sku)]
            args += [sku, qty]
        reply = await self._call(self._create, keys, args)
        outcome = _text(reply[0])
        now = int(reply[1])
        if outcome == "conflict":
            return Created(outcome="conflict", now_ms=now)
        if outcome == "short":
            return Created(outcome="short", now_ms=now, available=[int(a) for a in reply[2:]])
        record = record_of(hold_id, now, reply[2:6])
        return Created(
            outcome="created" if outcome == "created" else "exists", now_ms=now, record=record
        )

    async def get(self, hold_id: str) -> HoldRecord | None:
        """The hold ``hold_id`` names, or None when unknown (or forgotten)."""
        if self._sharded is not None:
            return await self._sharded.get(hold_id)
        live = self.live()
        reply = await self._call(self._get, [live.hold(hold_id)], [], writes=False)
        if len(reply) == 1:
            return None
        return record_of(hold_id, int(reply[0]), reply[1:5])

    async def release(self, hold_id: str) -> tuple[HoldRecord, bool] | None:
        """End an active hold: (the hold as it then is, True if this call released it)."""
        if self._sharded is not None:
            return await self._sharded.release(hold_id)
        live = self.live()
        found = await self.get(hold_id)
        if found is None:
            return None
        if not found.active:
            return found, False
        skus = [line.sku for line in found.lines if line.held > 0]
        keys = [live.hold(hold_id), live.changes(), *map(live.held, skus)]
        args = [self.memory_ms, self.changes_maxlen, hold_id, *skus]
        reply = await self._call(self._release, keys, args)
        if len(reply) == 1:
            return None
        record = record_of(hold_id, int(reply[0]), reply[1:5])
        return record, record.status == "released"

    async def extend(self, hold_id: str, ttl_ms: int) -> tuple[HoldRecord, bool] | None:
        """Move an active hold's expiry to now + ``ttl_ms``: (the hold, True if extended)."""
        if self._sharded is not None:
            return await self._sharded.extend(hold_id, ttl_ms)
        live = self.live()
        found = await self.get(hold_id)
        if found is None:
            return None
        if not found.active:
            return found, False
        skus = [line.sku for line in found.lines if line.held > 0]
        keys = [live.hold(hold_id), live.changes(), *map(live.held, skus)]
        args = [ttl_ms, self.memory_ms, self.changes_maxlen, hold_id, *skus]
        reply = await self._call(self._extend, keys, args)
        outcome = _text(reply[0])
        if outcome == "unknown":
            return None
        return record_of(hold_id, int(reply[1]), reply[2:6]), outcome == "extended"

    async def convert(
        self, hold_id: str, order_id: str, order_skus: Sequence[str]
    ) -> frozenset[str]:
        """Convert the hold for ``order_id``: the SKUs whose lines the order's reservations
        take over (its other SKUs are released now); empty when the hold has ended."""
        if self._sharded is not None:
            return await self._sharded.convert(hold_id, order_id, order_skus)
        live = self.live()
        found = await self.get(hold_id)
        if found is None:
            return frozenset()
        if not found.active and found.stored_status != "converted":
            return frozenset()
        in_order = set(order_skus)
        held = [line.sku for line in found.lines if line.held > 0]
        others = [sku for sku in held if sku not in in_order]
        keys = [live.hold(hold_id), live.changes(), *map(live.held, others)]
        args = [order_id, self.memory_ms, self.changes_maxlen, hold_id, *others]
        reply = await self._call(self._convert, keys, args)
        if int(reply[0]) != 1:
            return frozenset()
        return frozenset(sku for sku in held if sku in in_order)

    async def held_one(self, sku: str) -> bytes:
        """``sku``'s hold snapshot (codecs.holds.HeldSnapshot), read now: what a follower
        reads again when it missed a change of the SKU's lines."""
        if self._sharded is not None:
            return await self._sharded.held_one(sku)
        return cast("bytes", await self._call(self._held_one, [self.live().held(sku)], []))

    async def held_page(self, cursor: int, count: int) -> tuple[int, list[tuple[str, bytes]]]:
        """About ``count`` SKUs' hold snapshots from SCAN ``cursor``; the next cursor (0: done)."""
        if self._sharded is not None:
            return await self._sharded.held_page(cursor, count)
        live = self.live()
        try:
            next_cursor, values = await self._held_page(
                args=[cursor, live.held_pattern(), count]
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"reading a page of hold lines failed: {exc}") from exc
        pairs = cast("list[bytes]", values)
        return int(next_cursor), [
            (live.sku_of(pairs[i]), pairs[i + 1]) for i in range(0, len(pairs), 2)
        ]
