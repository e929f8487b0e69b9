"""The availability feed's state in Redis: what was published, the lease, webhook positions.

Per SKU one hash (:meth:`~stocksync.store.layout.Keys.feed_published`) with,
per channel, ``p:{channel}`` the last message the broker acknowledged
(:class:`Published`, msgpack) and ``q:{channel}`` the JSON of a message being
sent. The publisher writes ``q`` before it sends and replaces it by ``p`` once
the broker acknowledged: after a crash a ``q`` says "this may have reached
consumers", so the restarted feed sends that (sku, channel) again whatever ``p``
says, and never leaves a consumer on a figure it does not serve.

Every write is fenced by the lease (:meth:`FeedStore.acquire`): a script checks
that the writer still holds it, so a feed process that lost its lease (paused,
partitioned) cannot roll the state back under the active one.

On a Redis Cluster a script may touch one slot only, and the SKUs' hashes are
spread over the model's shards (:mod:`stocksync.store.layout`). There each
shard has a copy of the lease in its slot (``feed_fence``), set with the same
token and expiry whenever the lease is taken or renewed, and a write to the
shard checks that copy. A process holds the lease only once it holds every
copy: a new holder's claim of a shard waits until the old holder's copy there
expired, and it loads the state after its claims, so whatever the old holder
wrote before that is in what it loads, and nothing it writes after.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Final, Literal

import msgspec
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from stocksync.codecs.projections import Status
from stocksync.errors import StocksyncError
from stocksync.store.layout import CLUSTER_SHARDS, Keys
from stocksync.store.protocol import StoreUnavailable
from stocksync.store.redis import Client

__all__ = ["FeedStore", "Lease", "LeaseLost", "Published", "StoredFeed"]

_Errors: Final = (RedisError, RedisClusterException, OSError)

#: What :meth:`FeedStore.acquire` found: ``renewed`` (this process held it), ``taken``
#: (nobody held it: free, expired, or lost with the rest of Redis's data), or None
#: (another process holds it).
Lease = Literal["renewed", "taken"] | None

_PUBLISHED: Final = "p:"
_SENDING: Final = "q:"


class LeaseLost(StocksyncError):
    """Another feed process holds the lease now; this one must stop publishing."""


class Published(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The last message acknowledged for one (sku, channel)."""

    version: int
    available: int
    status: Status
    #: When it was sent (ms since the epoch).
    sent_ms: int


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Published)
_changes_encoder: Final = msgspec.msgpack.Encoder()


def _lua_string(value: bytes) -> msgspec.Raw:
    """``value`` as a msgpack str: Redis's ``cmsgpack`` reads no bin type, and a Lua string
    is any bytes."""
    n = len(value)
    if n < 32:
        head = bytes((0xA0 | n,))
    elif n < 0x100:
        head = bytes((0xD9, n))
    elif n < 0x10000:
        head = b"\xda" + n.to_bytes(2, "big")
    else:
        head = b"\xdb" + n.to_bytes(4, "big")
    return msgspec.Raw(head + value)


class StoredFeed(msgspec.Struct, frozen=True):
    """One SKU's stored feed state: per channel the published record and a message in flight."""

    published: dict[str, Published]
    sending: dict[str, bytes]


# KEYS[1] lease; ARGV[1] token, ARGV[2] ms to live. 2 taken, 1 renewed, 0 held by another.
_ACQUIRE: Final = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] lease, KEYS[2..] hashes; ARGV[1] token, ARGV[2] msgpack: per hash KEYS[i + 1]
# a pair {fields and values to set (flat), fields to delete}. 0 when the lease is not ours.
# One packed argument instead of three per field: the client's cost is per argument.
_WRITE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local changes = cmsgpack.unpack(ARGV[2])
for i = 1, #changes do
  local key, change = KEYS[i + 1], changes[i]
  redis.call('HSET', key, unpack(change[1]))
  if #change[2] > 0 then redis.call('HDEL', key, unpack(change[2])) end
end
return 1
"""

# KEYS[1] lease, KEYS[2] positions; ARGV[1] token, then partition, offset pairs.
_POSITIONS: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for a = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[a], ARGV[a + 1]) end
return 1
"""


class FeedStore:
    """The feed's keys, fields, codec and scripts: one adapter (see the module docstring)."""

    def __init__(self, client: Client, keys: Keys, token: str) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        if self.cluster and keys.shards == 1:
            keys = Keys(keys.ns, keys.base, shards=CLUSTER_SHARDS)
        self.keys = keys
        #: This process's lease token.
        self.token = token
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._write = client.register_script(_WRITE)
        self._positions = client.register_script(_POSITIONS)

    # --- the lease ---

    async def acquire(self, seconds: float) -> Lease:
        """Take or renew the lease for ``seconds``; how this process holds it, None if not.

        ``taken`` while this process thought it held the lease means it lapsed
        in between (Redis lost its data, or this process stalled past it and
        another may have published meanwhile): what this process remembers of
        the feed state may be stale, so it must load it again. On a cluster the
        same holds for each shard's copy; while another process's copy of a
        shard lives on, this process does not hold the lease yet (None).
        """
        args: list[str | int] = [self.token, int(seconds * 1000)]
        try:
            held = await self._acquire(keys=[self.keys.feed_lease()], args=args)
            if held and self.cluster:
                copies = await asyncio.gather(*(
                    self._acquire(keys=[self.keys.feed_fence(shard)], args=args)
                    for shard in range(self.keys.shards)
                ))
                if not all(copies):
                    return None  # the previous holder's copies expire within its lease
                if 2 in copies:
                    held = 2
        except _Errors as exc:
            raise StoreUnavailable(f"Redis failed taking the feed lease: {exc}") from exc
        return "taken" if held == 2 else "renewed" if held == 1 else None

    async def release(self) -> None:
        """Give the lease up if this process holds it."""
        keys = [self.keys.feed_lease()]
        if self.cluster:
            keys += [self.keys.feed_fence(shard) for shard in range(self.keys.shards)]
        try:
            await asyncio.gather(*(self._release(keys=[key], args=[self.token]) for key in keys))
        except _Errors as exc:
            raise StoreUnavailable(f"Redis failed releasing the feed lease: {exc}") from exc

    async def holder(self) -> str | None:
        """The token of the feed process holding the lease, or None."""
        try:
            raw = await self.client.get(self.keys.feed_lease())
        except _Errors as exc:
            raise StoreUnavailable(f"Redis failed reading the feed lease: {exc}") from exc
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    # --- published state ---

    async def load(self, count: int) -> AsyncIterator[dict[str, StoredFeed]]:
        """Every SKU's stored feed state, in pages of about ``count`` SKUs (every node)."""
        try:
            keys: list[bytes] = []
            async for key in self.client.scan_iter(
                match=self.keys.feed_published_pattern(), count=count
            ):
                keys.append(key)
                if len(keys) >= count:
                    yield await self._read(keys)
                    keys = []
            if keys:
                yield await self._read(keys)
        except _Errors as exc:
            raise StoreUnavailable(f"Redis failed loading the feed state: {exc}") from exc

    async def _read(self, keys: list[bytes]) -> dict[str, StoredFeed]:
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            values = await pipe.execute()
        page: dict[str, StoredFeed] = {}
        for key, fields in zip(keys, values, strict=True):
            sku = self.keys.sku_of(key)
            published: dict[str, Published] = {}
            sending: dict[str, bytes] = {}
            for name, value in fields.items():
                text = bytes(name).decode()
                if text.startswith(_PUBLISHED):
                    try:
                        published[text[len(_PUBLISHED):]] = _decoder.decode(value)
                    except msgspec.DecodeError:
                        continue  # sent again: the safe side
                elif text.startswith(_SENDING):
                    sending[text[len(_SENDING):]] = bytes(value)
            page[sku] = StoredFeed(published, sending)
        return page

    async def sending(self, messages: Mapping[str, Sequence[tuple[str, bytes]]]) -> None:
        """Record messages about to be sent: SKU -> (channel, message JSON); fenced."""
        await self._fenced({
            sku: [(_SENDING + channel, raw, "") for channel, raw in items]
            for sku, items in messages.items()
        })

    async def published(self, records: Mapping[str, Sequence[tuple[str, Published]]]) -> None:
        """Record acknowledged messages, clearing their in-flight copies; fenced."""
        await self._fenced({
            sku: [
                (_PUBLISHED + channel, _encoder.encode(record), _SENDING + channel)
                for channel, record in items
            ]
            for sku, items in records.items()
        })

    async def _fenced(self, changes: Mapping[str, Sequence[tuple[str, bytes, str]]]) -> None:
        """One script call per shard (all at once); LeaseLost if any shard refused."""
        if not changes:
            return
        keys = self.keys
        by_shard: dict[int, list[str]] = {}
        for sku in changes:
            by_shard.setdefault(keys.shard_of(sku), []).append(sku)
        try:
            done = await asyncio.gather(*(
                self._write_shard(shard, skus, changes) for shard, skus in by_shard.items()
            ))
        except _Errors as exc:
            raise StoreUnavailable(f"Redis failed recording the feed state: {exc}") from exc
        if not all(done):
            raise LeaseLost("another feed process holds the lease")

    async def _write_shard(
        self, shard: int, skus: list[str], changes: Mapping[str, Sequence[tuple[str, bytes, str]]]
    ) -> bool:
        keys = [self.keys.feed_fence(shard)]
        keys += [self.keys.feed_published(sku) for sku in skus]
        packed: list[tuple[list[str | msgspec.Raw], list[str]]] = []
        for sku in skus:
            sets: list[str | msgspec.Raw] = []
            drops: list[str] = []
            for field, value, drop in changes[sku]:
                sets += (field, _lua_string(value))
                if drop:
                    drops.append(drop)
            packed.append((sets, drops))
        return bool(
            await self._write(keys=keys, args=[self.token, _changes_encoder.encode(packed)])
        )

    # --- webhook positions ---

    async def positions(self, webhook: str) -> dict[int, int]:
        """Partition -> next feed-topic offset webhook ``webhook`` delivers."""
        try:
            raw = await self.client.hgetall(self.keys.feed_webhook(webhook))
        except _Errors as exc:
            raise StoreUnavailable(f"Redis failed reading webhook positions: {exc}") from exc
        return {int(k): int(v) for k, v in raw.items()}

    async def save_positions(self, webhook: str, positions: Mapping[int, int]) -> None:
        """Record webhook ``webhook``'s next offsets; fenced by the lease (shard 0's copy)."""
        if not positions:
            return
        args: list[str | int] = [self.token]
        for partition, offset in positions.items():
            args += [partition, offset]
        try:
            ok = await self._positions(
                keys=[self.keys.feed_fence(0), self.keys.feed_webhook(webhook)], args=args
            )
        except _Errors as exc:
            raise StoreUnavailable(f"Redis failed saving webhook positions: {exc}") from exc
        if not ok:
            raise LeaseLost("another feed process holds the lease")
