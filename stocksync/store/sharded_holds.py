"""Checkout holds on a Redis Cluster: a hold's lines decided shard group by shard group.

On one Redis a hold is one script call over its record and every line's keys
(:mod:`stocksync.store.holds`). On a cluster a script may touch one slot only:
the hold's record lives in the slot of its ``hold_id`` (``{base}:hold:{ID}``,
so the idempotency record is one key on one node), and each line's keys (SKU
hash, held hash, the shard's change stream) in its SKU's shard
(:mod:`stocksync.store.layout`). So a hold is created in steps:

1. **Begin** (record slot): claim the ``hold_id`` with status ``pending``, its
   fingerprint, channel, requested lines and expiry; or find the hold it names
   (an identical retry: ``exists``; another body: ``conflict``; a ``pending``
   one: ``503`` while its creator's lease of :data:`LEASE_MS` runs, then, the
   creator having died, resume it with its stored expiry).
2. **Grant** (one call per shard group, in shard order): each group is decided
   atomically as on one Redis, against the channel's figure less the other
   holds' lines at that moment, so what is granted never exceeds what the
   channel had: never an oversell. A line the hold already has (a resumed try,
   with the hold's expiry) is kept as it is; one with another expiry or channel
   was left by an ended try (a refusal whose undo died) and is decided afresh.
   All or nothing: a group with a short line grants nothing, the record is
   marked ``refused`` (forgotten at once: a retry decides again) and the groups
   granted before it are undone (their lines dropped). The undo drops only the
   lines of its try (its expiry and channel): a new request with that
   ``hold_id`` may have claimed the record and granted its own lines between
   the refusal and the undo, and those stay. A creator slower than its lease
   whose refusal finds the hold finished (by an identical request that resumed
   it, keeping its lines) drops nothing and answers the hold as it is.
3. **Finish** (record slot): ``held`` or ``partial`` with what was granted.

What a reader can see that one Redis never shows: the lines of an
all-or-nothing hold granted in one shard and then undone because another
shard was short (a figure that dips and comes back), and a hold refused
because of such a hold being undone at that moment. Never an oversell, never a
line granted beyond what the channel had. A process that dies mid-way leaves
the lines it granted counting until the hold's expiry (stock kept, not sold
twice); the hold answers ``503`` while pending, a retry of the same request
resumes and finishes it, and ``DELETE`` releases it.

Release, extend and conversion change the record first and then the lines
group by group (release and conversion: ended first, so a crash keeps stock
held until expiry rather than shown free while the hold says held; extend:
lines first, so a crash never leaves a hold whose lines expire before it says).

A conversion may meet a hold still ``pending``: it marks the record converted,
then seals each of the hold's shards (``Keys.hold_sealed``: the grant script of
that shard grants this hold nothing any more) and drops the lines the order
lacks. The order's lines granted before a seal are the reservation's to take
over in the applier's batch write, as for a finished hold; none is granted
after. So the order's SKUs stop counting as held in the step their reservation
starts, never both, never neither. The creator stops at a sealed group (or
finishes, or finds a group short) and finds the record converted: it leaves
every line to the conversion, records the lines it had granted and answers the
hold as it is. A refusal (all or nothing, a group short) ends the record
before it drops any line, so a conversion meets either the refusal or the
lines.
With ``wait_replicas`` each call waits for the replicas' acknowledgement
(:mod:`stocksync.store.acked`), so a granted hold survives a failover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

import msgspec
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from stocksync.codecs.holds import StoredLine
from stocksync.store import scripts
from stocksync.store.acked import evalsha_acked
from stocksync.store.layout import Keys
from stocksync.store.protocol import StoreError, StoreUnavailable
from stocksync.store.routed import evalsha_routed

if TYPE_CHECKING:
    from stocksync.store.holds import Created, HoldRecord

__all__ = ["ShardedHolds"]

_Errors = (RedisError, RedisClusterException, OSError)
#: How long a refused hold's record stays (only for a concurrent identical request).
_REFUSED_MS: Final = 60_000
#: How long a pending hold is its creator's: an identical request meanwhile is told to
#: retry (503), and resumes the hold only after it (the creator died). Far longer than a
#: hold takes; bounded below by the calls' own timeouts.
LEASE_MS: Final = 15_000
_lines_encoder: Final = msgspec.msgpack.Encoder()
#: Bits of a held_page cursor per primary index (the rest is that primary's SCAN cursor).
_NODE_BITS: Final = 8


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class ShardedHolds:
    """The hold operations of :class:`~stocksync.store.holds.HoldStore` on a cluster."""

    def __init__(
        self,
        client: RedisCluster,
        live: Callable[[], Keys],
        *,
        memory_ms: int,
        changes_maxlen: int,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        max_connections: int = 32,
    ) -> None:
        self.client = client
        # Hold calls in flight at once: a burst of checkouts waits for a turn instead of
        # exhausting the cluster client's pool of a node (MaxConnectionsError).
        self._slots = asyncio.Semaphore(max_connections)
        self.live = live
        self.memory_ms = memory_ms
        self.changes_maxlen = changes_maxlen
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._scripts = {
            name: client.register_script(getattr(scripts, name))
            for name in (
                "SHARDED_HOLD_BEGIN", "SHARDED_HOLD_GRANT", "SHARDED_HOLD_DROP",
                "SHARDED_HOLD_EXTEND_LINES", "SHARDED_HOLD_FINISH", "SHARDED_HOLD_SET",
                "SHARDED_HOLD_SEAL", "GET_HOLD", "READ_HELD", "READ_HELD_PAGE",
            )
        }

    async def _call(
        self, name: str, keys: Sequence[str], args: Sequence[Any], *, writes: bool = True
    ) -> Any:
        """One script call in one slot (acknowledged by replicas when it writes)."""
        script = self._scripts[name]
        try:
            async with self._slots:
                if writes and self.wait_replicas:
                    return await evalsha_acked(
                        self.client, script, keys, args,
                        replicas=self.wait_replicas, timeout_ms=self.wait_timeout_ms,
                    )
                return await evalsha_routed(self.client, script, keys, args)
        except StoreUnavailable:
            raise
        except ResponseError as exc:
            if _redirected(exc):
                raise StoreUnavailable(f"a hold script failed: {exc}") from exc
            raise StoreError(f"a hold script failed: {exc}") from exc
        except _Errors as exc:
            raise StoreUnavailable(f"a hold script failed: {exc!r}") from exc

    def _groups(self, live: Keys, skus: Sequence[str]) -> list[tuple[int, list[int]]]:
        """Indexes of ``skus`` per shard, in shard order (the order every hold takes)."""
        groups: dict[int, list[int]] = {}
        for i, sku in enumerate(skus):
            groups.setdefault(live.shard_of(sku), []).append(i)
        return sorted(groups.items())

    async def _drop(
        self, live: Keys, hold_id: str, skus: Sequence[str],
        tried: tuple[int, str] | None = None,
    ) -> None:
        """Delete the hold's lines of ``skus`` (every shard group, in shard order).

        ``tried`` (a creator's undo): the expiry and channel of its try, whose lines only
        are deleted; a line of another expiry was granted by a later try with this
        ``hold_id`` (the refused record is forgotten at once) and stays. Without it (a
        release, a conversion) whatever line the hold has goes."""
        extra: list[str | int] = [] if tried is None else [tried[0], tried[1]]
        for shard, group in self._groups(live, skus):
            names = [skus[i] for i in group]
            await self._call(
                "SHARDED_HOLD_DROP",
                [live.changes(shard), *map(live.held, names)],
                [hold_id, self.changes_maxlen, *names, *extra],
            )

    # --- create ---

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
        """Grant a new hold shard group by shard group, or find the one ``hold_id`` names."""
        from stocksync.store.holds import Created

        live = self.live()
        hold = live.hold(hold_id)
        requested = _lines_encoder.encode([StoredLine(s, q, 0) for s, q in lines])
        begun = await self._call(
            "SHARDED_HOLD_BEGIN", [hold],
            [fingerprint, channel, ttl_ms, 1 if partial else 0, self.memory_ms, requested,
             LEASE_MS],
        )
        outcome, now = _text(begun[0]), int(begun[1])
        if outcome == "conflict":
            return Created(outcome="conflict", now_ms=now)
        if outcome == "busy":
            raise StoreUnavailable(f"hold {hold_id!r} is being decided by another request; retry")
        if outcome == "exists":
            return Created(outcome="exists", now_ms=now, record=_record(hold_id, now, begun[2:6]))
        exp, partial = int(begun[2]), _text(begun[3]) == "1"
        skus = [sku for sku, _ in lines]
        held = [0] * len(lines)
        #: Per line, what its channel had before this hold (a refusal names the short).
        available = [0] * len(lines)
        granted: list[str] = []
        for shard, group in self._groups(live, skus):
            keys = [live.changes(shard)]
            args: list[str | int] = [
                hold_id, channel, exp, 1 if partial else 0, self.changes_maxlen, len(group)
            ]
            for i in group:
                sku, qty = lines[i]
                keys += [live.sku(sku), live.held(sku)]
                args += [sku, qty]
            keys.append(live.hold_sealed(shard, hold_id))
            # A failure here leaves what earlier groups granted until the hold is resumed
            # (a retry), released or expires: stock kept, never sold twice.
            reply = await self._call("SHARDED_HOLD_GRANT", keys, args)
            if _text(reply[0]) == "ended":
                break  # converted meanwhile: the finish below finds the record so
            for k, i in enumerate(group):
                available[i], held[i] = int(reply[2 + 2 * k]), int(reply[3 + 2 * k])
            if _text(reply[0]) == "short":
                # The record first: converted meanwhile, its conversion took over what
                # the earlier groups granted (the order's lines) and released the rest;
                # else nothing can convert it any more, and every line so far goes (a
                # resumed try may hold lines in this group too).
                # Converted meanwhile, the record shows what the groups before this one
                # granted: the lines the conversion met.
                refused = await self._finish(
                    hold, fingerprint, "refused", requested, _granted(lines, held)
                )
                found = refused[0] if refused is not None and not refused[1] else None
                if found is not None and found.stored_status in ("converted", "held", "partial"):
                    # Or finished meanwhile by an identical request that resumed this
                    # hold (this creator slower than its lease): the lines are that
                    # hold's (its try kept them, the same expiry), so they stay.
                    return Created(outcome="exists", now_ms=found.now_ms, record=found)
                await self._drop(
                    live, hold_id, granted + [skus[i] for i in group], (exp, channel)
                )
                if found is not None and found.stored_status not in ("refused", "pending"):
                    # Released meanwhile (a DELETE of the pending hold): as it is.
                    return Created(outcome="exists", now_ms=found.now_ms, record=found)
                await self._probe(live, hold_id, channel, lines, shard, available)
                return Created(outcome="short", now_ms=int(reply[1]), available=available)
            granted += [skus[i] for i in group]
        status = "held" if all(h == q for h, (_, q) in zip(held, lines, strict=True)) else (
            "partial"
        )
        stored = _granted(lines, held)
        finished = await self._finish(hold, fingerprint, status, stored, stored)
        record, ended = finished if finished is not None else (None, False)
        if ended and record is not None:
            return Created(outcome="created", now_ms=record.now_ms, record=record)
        if record is not None and record.stored_status in ("held", "partial", "converted"):
            # An identical request (a retry) finished it first, with the same lines: they
            # are this hold's lines too, so they stay. Or an order converted it while it
            # was being decided: its conversion sealed the shards, took over the order's
            # lines and released the others; the client sees the hold as it ended.
            return Created(outcome="exists", now_ms=record.now_ms, record=record)
        # Released (or refused by an identical request) while this one granted: what it
        # granted goes, and the client sees the hold as it is. Only this try's lines: a
        # refused record is forgotten at once, and a new request with this hold_id may
        # have granted its own since.
        await self._drop(live, hold_id, granted, (exp, channel))
        if record is None or record.stored_status == "refused":
            raise StoreUnavailable(
                f"hold {hold_id!r} was decided by a concurrent identical request; retry"
            )
        return Created(outcome="exists", now_ms=record.now_ms, record=record)

    async def _probe(
        self,
        live: Keys,
        hold_id: str,
        channel: str,
        lines: Sequence[tuple[str, int]],
        after: int,
        available: list[int],
    ) -> None:
        """The figures of the groups after shard ``after`` into ``available`` (nothing is
        granted), so a refusal names every short line, as on one Redis."""
        skus = [sku for sku, _ in lines]
        for shard, group in self._groups(live, skus):
            if shard <= after:
                continue
            keys = [live.changes(shard)]
            args: list[str | int] = [hold_id, channel, 0, 2, self.changes_maxlen, len(group)]
            for i in group:
                keys += [live.sku(skus[i]), live.held(skus[i])]
                args += [skus[i], lines[i][1]]
            reply = await self._call("SHARDED_HOLD_GRANT", keys, args)
            for k, i in enumerate(group):
                available[i] = int(reply[2 + 2 * k])

    async def _finish(
        self, hold: str, fingerprint: str, status: str, lines: bytes, granted: bytes
    ) -> tuple[HoldRecord, bool] | None:
        """End the pending state: the hold as it then is (and whether this call ended it).
        ``lines`` are recorded with ``status``; ``granted`` (the lines as granted so far)
        when an order converted the hold meanwhile. None when the record is gone, or is
        no longer this request's: refused by an identical request (this creator slower
        than its lease), forgotten, and claimed by a request with another body; that
        hold is not this one, and must not be answered as this request's."""
        reply = await self._call(
            "SHARDED_HOLD_FINISH", [hold],
            [fingerprint, status, lines,
             _REFUSED_MS if status == "refused" else self.memory_ms, granted],
        )
        if len(reply) == 1 or (len(reply) > 6 and int(reply[6]) == 0):
            return None
        return _record(_hold_id_of(hold), int(reply[0]), reply[1:5]), int(reply[5]) == 1

    # --- read ---

    async def get(self, hold_id: str) -> HoldRecord | None:
        """The hold ``hold_id`` names, or None when unknown (or forgotten, or refused)."""
        reply = await self._call(
            "GET_HOLD", [self.live().hold(hold_id)], [], writes=False
        )
        if len(reply) == 1:
            return None
        record = _record(hold_id, int(reply[0]), reply[1:5])
        if record.stored_status == "refused":
            return None
        if record.stored_status == "pending":
            if record.expires_ms > record.now_ms:
                raise StoreUnavailable(f"hold {hold_id!r} is being decided; retry shortly")
            # Never finished (its creator died) and past its expiry: expired, holding nothing.
            return msgspec.structs.replace(record, stored_status="held")
        return record

    # --- end or extend ---

    async def release(self, hold_id: str) -> tuple[HoldRecord, bool] | None:
        """End a hold (also one still being decided): the hold as it then is, True if this
        call released it."""
        live = self.live()
        reply = await self._call(
            "SHARDED_HOLD_SET", [live.hold(hold_id)], ["released", self.memory_ms, ""]
        )
        if len(reply) == 2:
            return None
        record = _record(hold_id, int(reply[1]), reply[2:6])
        released = int(reply[0]) == 1
        if released:
            # Every line, not just those with held > 0: a pending hold's record does not
            # say yet what its creator granted.
            await self._drop(live, hold_id, [line.sku for line in record.lines])
        return record, released

    async def extend(self, hold_id: str, ttl_ms: int) -> tuple[HoldRecord, bool] | None:
        """Move an active hold's expiry to now + ``ttl_ms``: lines first, then the record."""
        live = self.live()
        found = await self.get(hold_id)
        if found is None:
            return None
        if not found.active:
            return found, False
        exp = found.now_ms + ttl_ms
        skus = [line.sku for line in found.lines if line.held > 0]
        for shard, group in self._groups(live, skus):
            names = [skus[i] for i in group]
            await self._call(
                "SHARDED_HOLD_EXTEND_LINES",
                [live.changes(shard), *map(live.held, names)],
                [hold_id, exp, self.changes_maxlen, *names],
            )
        reply = await self._call(
            "SHARDED_HOLD_SET", [live.hold(hold_id)], ["extend", self.memory_ms, exp]
        )
        if len(reply) == 2:
            return None
        return _record(hold_id, int(reply[1]), reply[2:6]), int(reply[0]) == 1

    async def convert(
        self, hold_id: str, order_id: str, order_skus: Sequence[str]
    ) -> frozenset[str]:
        """Convert the hold for ``order_id``: the record first, then release the hold's
        SKUs the order lacks; the SKUs whose lines the order's reservations take over.

        A hold still being decided (``pending``: its creator granting shard group by
        shard group) is converted too: each of its shards is sealed first, so that its
        creator grants nothing there any more, then its lines the order lacks are
        dropped. A line of the order's SKUs granted before the seal is the order's
        reservation's to take over, in the applier's batch write, as for a finished
        hold; one not granted by then never is. The creator finds the record converted
        and leaves it so (see :meth:`create`).
        """
        live = self.live()
        reply = await self._call(
            "SHARDED_HOLD_SET", [live.hold(hold_id)], ["converted", self.memory_ms, order_id]
        )
        if len(reply) == 2 or int(reply[0]) != 1:
            return frozenset()
        record = _record(hold_id, int(reply[1]), reply[2:6])
        in_order = set(order_skus)
        if _text(reply[6]) == "1":  # converted while pending (or a retry of that)
            skus = [line.sku for line in record.lines]
            for shard, _ in self._groups(live, skus):
                await self._call(
                    "SHARDED_HOLD_SEAL", [live.hold_sealed(shard, hold_id)],
                    [record.expires_ms],
                )
            held = skus
        else:
            held = [line.sku for line in record.lines if line.held > 0]
        await self._drop(live, hold_id, [sku for sku in held if sku not in in_order])
        return frozenset(sku for sku in held if sku in in_order)

    # --- loading ---

    def _primaries(self) -> list[ClusterNode]:
        return sorted(self.client.get_primaries(), key=lambda node: node.name)

    async def held_one(self, sku: str) -> bytes:
        """``sku``'s hold snapshot (codecs.holds.HeldSnapshot), read now."""
        reply = await self._call("READ_HELD", [self.live().held(sku)], [], writes=False)
        return cast("bytes", reply)

    async def held_page(self, cursor: int, count: int) -> tuple[int, list[tuple[str, bytes]]]:
        """About ``count`` SKUs' hold snapshots: one primary after the other; the cursor
        packs the primary's index and its SCAN cursor (0: done)."""
        live = self.live()
        script = self._scripts["READ_HELD_PAGE"]
        try:
            await self.client.initialize()
            nodes = self._primaries()
            index, node_cursor = cursor & ((1 << _NODE_BITS) - 1), cursor >> _NODE_BITS
            args = (node_cursor, live.held_pattern(), count)
            try:
                reply = await self.client.execute_command(
                    "EVALSHA", script.sha, 0, *args, target_nodes=nodes[index]
                )
            except NoScriptError:
                await self.client.script_load(script.script)
                reply = await self.client.execute_command(
                    "EVALSHA", script.sha, 0, *args, target_nodes=nodes[index]
                )
        except _Errors as exc:
            raise StoreUnavailable(f"reading a page of hold lines failed: {exc}") from exc
        if isinstance(reply, dict):  # the cluster client answers per node
            (reply,) = reply.values()
        next_cursor, values = int(reply[0]), cast("list[bytes]", reply[1])
        pairs = [(live.sku_of(values[i]), values[i + 1]) for i in range(0, len(values), 2)]
        if next_cursor:
            return (next_cursor << _NODE_BITS) | index, pairs
        if index + 1 < len(nodes):
            return index + 1, pairs
        return 0, pairs


def _granted(lines: Sequence[tuple[str, int]], held: Sequence[int]) -> bytes:
    """A hold's stored lines (msgpack StoredLine): each line as requested and as held."""
    return _lines_encoder.encode(
        [StoredLine(sku, qty, h) for (sku, qty), h in zip(lines, held, strict=True)]
    )


def _redirected(exc: ResponseError) -> bool:
    text = str(exc).split(" ", 1)[0]
    return text in ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")


def _hold_id_of(key: str) -> str:
    return key[key.index("{") + 1 : key.rindex("}")]


def _record(hold_id: str, now: int, fields: Sequence[Any]) -> HoldRecord:
    from stocksync.store.holds import record_of  # holds imports this module

    return record_of(hold_id, now, fields)

