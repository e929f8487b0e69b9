"""Which incarnation of its topic each source partition is: one hash in the base namespace.

``{base}:incarnations`` maps ``topic/partition`` to the text ``"n offset crc"``
(:class:`Incarnation`). Topics outlive the model's generations, so the hash is
shared by all of them; :mod:`stocksync.agents.incarnations` decides what goes in.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from stocksync.store.layout import Keys
from stocksync.store.protocol import StoreUnavailable

__all__ = ["TP", "Incarnation", "IncarnationRecords"]

#: A source partition: (topic, partition).
TP = tuple[str, int]


class Incarnation(msgspec.Struct, frozen=True):
    """One partition's record: its incarnation and one record read in it."""

    #: 0 for the first incarnation the worker saw, then 1, 2, ...
    n: int = 0
    #: Offset of a record read in this incarnation; -1 before any.
    offset: int = -1
    #: CRC-32 of that record's key and value.
    crc: int = 0

    def encode(self) -> str:
        """The stored text (parsed by :data:`_SAVE`: keep ``n`` and ``offset`` first)."""
        return f"{self.n} {self.offset} {self.crc}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Incarnation:
        """Parse the stored text."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        n, offset, crc = (int(part) for part in text.split())
        return cls(n, offset, crc)


def _field(tp: TP) -> str:
    return f"{tp[0]}/{tp[1]}"


# Store a record unless the stored one is of a later incarnation, or of the same one and
# at least as far on: two workers during a rebalance never move a partition backwards.
_SAVE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local n, o = string.match(cur, '^(%-?%d+) (%-?%d+)')
  n = tonumber(n)
  o = tonumber(o)
  local nn = tonumber(ARGV[2])
  if nn < n or (nn == n and tonumber(ARGV[3]) <= o) then
    return cur
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return ARGV[4]
"""


class IncarnationRecords:
    """The incarnations hash of one base namespace."""

    def __init__(self, client: Redis | RedisCluster, keys: Keys) -> None:
        self.client = client
        self.key = keys.incarnations()
        self._save = client.register_script(_SAVE)

    async def load(self, tps: Sequence[TP]) -> dict[TP, Incarnation]:
        """The stored records of these partitions (absent ones are left out)."""
        try:
            raw = await self.client.hmget(self.key, [_field(tp) for tp in tps])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"loading topic incarnations failed: {exc}") from exc
        return {tp: Incarnation.decode(r) for tp, r in zip(tps, raw, strict=True) if r}

    async def load_all(self) -> dict[TP, Incarnation]:
        """Every stored record."""
        try:
            raw = await self.client.hgetall(self.key)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"loading topic incarnations failed: {exc}") from exc
        found: dict[TP, Incarnation] = {}
        for field, value in raw.items():
            name = field.decode() if isinstance(field, bytes) else str(field)
            topic, _, partition = name.rpartition("/")
            found[(topic, int(partition))] = Incarnation.decode(value)
        return found

    async def save(self, records: dict[TP, Incarnation]) -> dict[TP, Incarnation]:
        """Store records, never moving one back (see :data:`_SAVE`); what is stored after."""
        calls: list[list[str | int]] = [
            [_field(tp), record.n, record.offset, record.encode()]
            for tp, record in records.items()
        ]
        try:
            if isinstance(self.client, RedisCluster):
                # The cluster client pipelines no scripts; these are a worker's few partitions.
                raw = [await self._save(keys=[self.key], args=args) for args in calls]
            else:
                async with self.client.pipeline(transaction=False) as pipe:
                    for args in calls:
                        await self._save(keys=[self.key], args=args, client=pipe)
                    raw = await pipe.execute()
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreUnavailable(f"saving topic incarnations failed: {exc}") from exc
        return {tp: Incarnation.decode(r) for tp, r in zip(records, raw, strict=True)}
