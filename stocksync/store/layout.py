"""The Redis layout of the read model: every key, its type, its fields and their codecs.

Per-entity keys carry the entity id as a hash tag (``{sku}``, ``{order_id}``,
``{rma_id}``) so they spread over a Redis Cluster and each one lives in one
slot. A namespace (``redis_namespace``, default ``stocksync``) separates
deployments; each generation of the model (see
:mod:`stocksync.store.generation`) lives in a namespace of its own,
``{base}:{generation}``. Keys of one generation (``ns`` below)::

    {ns}:sku:{SKU}      hash    v     version (decimal)
                                pos   msgpack Position (codecs.state)
                                srv   msgpack Served: what the API answers (store.served)
    {ns}:order:{ID}     hash    s     msgpack OrderState
                                src   source topic partition of its last event
                                m     how far it has read that partition (state_mark)
    {ns}:rma:{ID}       hash    the same fields, msgpack RmaState in s
    {ns}:changes        stream  one entry per written SKU: sku, v, srv (see Change), cid
                                when its last event had a correlation_id, and
                                held when the write converted checkout holds; one per
                                change of a SKU's hold lines: sku, held (see HeldChange);
                                or a reload marker: reload, generation (see Reload)
    {ns}:model          string  the identity marker: the generation id, written before the
                                generation's first write and checked by every script
    {ns}:meta           hash    facts about the generation (who rebuilt it, from what)

Keys of the base namespace (``base``), shared by every generation::

    {base}:generation   string  id of the live generation
    {base}:rebuild-lock string  who is rebuilding the model (expires)
    {base}:workers      zset    worker id -> time (s) of its last heartbeat
    {base}:incarnations hash    ``topic/partition`` -> "n offset crc": which incarnation of
                                its topic a source partition is (store.incarnations)
    {base}:hold:{ID}    hash    a checkout hold: fp, ch, st, exp, lines, end, ord
                                (see store.holds); expires 24 h after the hold ends
    {base}:held:{SKU}   hash    a SKU's hold lines: v hold version, h:{hold id} msgpack
                                [channel, qty, expires ms] (codecs.holds.HeldLine),
                                t:{channel} the sum of the qty of its lines on that
                                channel, x the hold version those sums and the expiry
                                index below were last made exact at (see store.holds)
    {base}:held-exp:{SKU} zset  the hold ids of a SKU's lines, scored by expiry (ms)
    {base}:hold-sealed:{s3.69}{ID}  string  on a cluster only: a hold converted while its
                                lines were being granted; no more of them in the shard
                                (store.sharded_holds; expires with the hold)
    {base}:feed-pub:{SKU} hash  what the availability feed last published per channel:
                                p:{channel} msgpack [version, available, status, sent ms];
                                q:{channel} a message being sent (its JSON; store.feed)
    {base}:feed-lease   string  token of the active ``stocksync feed`` (expires)
    {base}:feed-hook:{NAME} hash partition -> next offset of the feed topic to deliver

Holds live in the base namespace so that a rebuild (a new generation) keeps them.

On a Redis Cluster (``redis_cluster = true``) a script may only touch keys of one
hash slot, and the batch write touches SKU hashes, their change entries, the
identity marker and the SKUs' hold lines together. So there the keys of a
generation are cut into :data:`CLUSTER_SHARDS` shards: every SKU, order and RMA
belongs to shard ``crc32(id) % CLUSTER_SHARDS``, and its keys carry the shard's
tag instead of the id as hash tag (``{ns}:sku:{s3.69}SKU``, likewise ``order``,
``rma`` and ``{base}:held:{s3.69}SKU``). Each shard has its own change stream
(``{ns}:changes:{s3.69}``) and its own copy of the identity marker
(``{ns}:model:{s3.69}``), in the same slot as its entities, so one script call per
shard stays atomic: the SKUs, their change entries and the marker check are one
step, exactly as on one Redis, and a follower never misses a change between a
write and its entry (which writing the entry in a second step would risk). The
shard tags are chosen to sit evenly over the slot space, so the usual slot
ranges of 1, 2, 3, 4, 6 or 12 masters each hold the same number of shards. On
one Redis there is one shard and the keys are exactly those above. Base keys
(pointer, lock, heartbeats, incarnations) are single keys and unchanged; a
checkout hold's record (``{base}:hold:{ID}``) is in the slot of its id, its lines
in their SKUs' shards, and a hold is decided shard group by shard group
(:mod:`stocksync.store.sharded_holds`). A hold's record has one more status
there, ``pending`` (being decided; field ``pa``: whether it is partial), and
``refused`` (a refusal kept a minute for a concurrent identical request). The
feed's keys follow the shards too (``{base}:feed-pub:{s3.69}SKU``,
``{base}:feed-hook:{s0.10}NAME``), and each shard has a copy of the feed's lease
(``{base}:feed-lease:{s3.69}``) that the feed's writes to that shard check.

Nothing outside :mod:`stocksync.store` names a key or a field.
"""

from __future__ import annotations

import zlib
from typing import Final

import msgspec

from stocksync.codecs.state import (
    OrderState,
    Position,
    RmaState,
    order_decoder,
    position_decoder,
    rma_decoder,
    state_encoder,
)

__all__ = [
    "CLUSTER_SHARDS",
    "CORRELATION_FIELD",
    "GENERATION_FIELD",
    "HELD_FIELD",
    "ORDER_STATE_FIELD",
    "POSITION_FIELD",
    "RELOAD_FIELD",
    "SERVED_FIELD",
    "SHARD_TAGS",
    "SKU_FIELD",
    "SOURCE_FIELD",
    "STATE_MARK_FIELD",
    "VERSION_FIELD",
    "Change",
    "HeldChange",
    "Keys",
    "Reload",
    "change_fields",
    "decode_change",
    "decode_order",
    "decode_position",
    "decode_rma",
    "encode_position",
    "encode_state",
    "reload_fields",
    "state_mark",
]

#: Fields of a SKU hash.
VERSION_FIELD: Final = "v"
POSITION_FIELD: Final = "pos"
SERVED_FIELD: Final = "srv"
#: Fields of an order or RMA hash.
ORDER_STATE_FIELD: Final = "s"
SOURCE_FIELD: Final = "src"
STATE_MARK_FIELD: Final = "m"
#: Fields of a change-stream entry: a written SKU ...
SKU_FIELD: Final = "sku"
#: ... or a reload marker: the new effective namespace and generation id.
RELOAD_FIELD: Final = "reload"
GENERATION_FIELD: Final = "generation"

#: Field of a change entry carrying a change of a SKU's hold lines (msgpack
#: codecs.holds.HeldDelta; HeldSnapshot from writers before deltas).
HELD_FIELD: Final = "held"
#: Field of a change entry: the correlation id of the last event the write applied.
CORRELATION_FIELD: Final = "cid"
_CID: Final = CORRELATION_FIELD.encode()
_HELD: Final = HELD_FIELD.encode()
_SKU: Final = SKU_FIELD.encode()
_VERSION: Final = VERSION_FIELD.encode()
_SERVED: Final = SERVED_FIELD.encode()
_RELOAD: Final = RELOAD_FIELD.encode()
_GENERATION: Final = GENERATION_FIELD.encode()

#: Hash tags of the shards of a clustered model, one per twelfth of the slot space
#: (slots 653, 2277, 3475, 4591, 6237, 7818, 8558, 9905, 11838, 12645, 14634, 15535).
SHARD_TAGS: Final = (
    "s0.10", "s1.3", "s2.163", "s3.69", "s4.11", "s5.12",
    "s6.29", "s7.22", "s8.67", "s9.2", "s10.23", "s11.33",
)
#: How many shards a model on a Redis Cluster has (one Redis: 1).
CLUSTER_SHARDS: Final = len(SHARD_TAGS)



class Keys:
    """Key builders for one effective namespace (a generation) and its base.

    ``shards`` is 1 on one Redis and :data:`CLUSTER_SHARDS` on a Redis Cluster.
    """

    __slots__ = ("base", "ns", "shards")

    def __init__(
        self, namespace: str = "stocksync", base: str | None = None, *, shards: int = 1
    ) -> None:
        if shards != 1 and shards != CLUSTER_SHARDS:
            raise ValueError(f"a model has 1 or {CLUSTER_SHARDS} shards, not {shards}")
        self.ns = namespace
        self.base = namespace if base is None else base
        self.shards = shards

    def beside(self, namespace: str) -> Keys:
        """The keys of another namespace under the same base, with the same shards."""
        return Keys(namespace, self.base, shards=self.shards)

    def shard_of(self, entity: str) -> int:
        """The shard of a SKU, order or RMA id (always 0 on one Redis)."""
        if self.shards == 1:
            return 0
        return zlib.crc32(entity.encode()) % self.shards

    def _entity(self, prefix: str, entity: str) -> str:
        if self.shards == 1:
            return f"{prefix}{{{entity}}}"
        return f"{prefix}{{{SHARD_TAGS[self.shard_of(entity)]}}}{entity}"

    def sku(self, sku: str) -> str:
        """Hash of one SKU (fields ``v``, ``pos``, ``srv``)."""
        return self._entity(f"{self.ns}:sku:", sku)

    def sku_pattern(self) -> str:
        """SCAN match pattern of every SKU hash."""
        return f"{self.ns}:sku:*"

    def sku_of(self, key: str | bytes) -> str:
        """The SKU inside a key built by :meth:`sku` (or :meth:`held`)."""
        text = key.decode() if isinstance(key, bytes) else key
        if self.shards == 1:
            return text[text.index("{") + 1 : text.rindex("}")]
        return text[text.index("}") + 1 :]  # namespaces hold no braces: the tag is first

    def order(self, order_id: str) -> str:
        """Hash of one order (fields ``s``, ``src``, ``m``)."""
        return self._entity(f"{self.ns}:order:", order_id)

    def rma(self, rma_id: str) -> str:
        """Hash of one RMA (fields ``s``, ``src``, ``m``)."""
        return self._entity(f"{self.ns}:rma:", rma_id)

    def changes(self, shard: int = 0) -> str:
        """Capped stream with one entry per written SKU of a shard (see :class:`Change`)."""
        if self.shards == 1:
            return f"{self.ns}:changes"
        return f"{self.ns}:changes:{{{SHARD_TAGS[shard]}}}"

    def model(self, shard: int = 0) -> str:
        """String holding the generation id: the model's identity marker (one per shard)."""
        if self.shards == 1:
            return f"{self.ns}:model"
        return f"{self.ns}:model:{{{SHARD_TAGS[shard]}}}"

    def meta(self) -> str:
        """Hash of facts about this generation."""
        return f"{self.ns}:meta"

    def generation(self) -> str:
        """String naming the live generation of the base namespace."""
        return f"{self.base}:generation"

    def rebuild_lock(self) -> str:
        """String held (with an expiry) by whoever rebuilds the model."""
        return f"{self.base}:rebuild-lock"

    def hold(self, hold_id: str) -> str:
        """Hash of one checkout hold (base namespace; fields in :mod:`stocksync.store.holds`)."""
        return f"{self.base}:hold:{{{hold_id}}}"

    def hold_sealed(self, shard: int, hold_id: str) -> str:
        """On a cluster: string in a shard's slot, set when a hold still being decided is
        converted; the hold's lines of that shard are then granted no more."""
        if self.shards == 1:
            return f"{self.base}:hold-sealed:{{{hold_id}}}"
        return f"{self.base}:hold-sealed:{{{SHARD_TAGS[shard]}}}{hold_id}"

    def held(self, sku: str) -> str:
        """Hash of one SKU's hold lines (base namespace): ``v`` and ``h:{hold_id}``."""
        return self._entity(f"{self.base}:held:", sku)

    def held_expiry(self, sku: str) -> str:
        """Sorted set of the hold ids of :meth:`held`'s lines by expiry (in its slot)."""
        return self._entity(f"{self.base}:held-exp:", sku)

    def held_pattern(self) -> str:
        """SCAN match pattern of every SKU's hold lines."""
        return f"{self.base}:held:*"

    def workers(self) -> str:
        """Sorted set of worker ids scored by the time (s) of their last heartbeat."""
        return f"{self.base}:workers"

    def incarnations(self) -> str:
        """Hash ``topic/partition`` -> that source partition's incarnation record."""
        return f"{self.base}:incarnations"

    def feed_published(self, sku: str) -> str:
        """Hash of what the feed last published for one SKU (see :mod:`stocksync.store.feed`)."""
        return self._entity(f"{self.base}:feed-pub:", sku)

    def feed_published_pattern(self) -> str:
        """SCAN match pattern of every :meth:`feed_published` hash."""
        return f"{self.base}:feed-pub:*"

    def feed_lease(self) -> str:
        """String holding the active feed process's token, with an expiry."""
        return f"{self.base}:feed-lease"

    def feed_webhook(self, name: str) -> str:
        """Hash partition -> next feed-topic offset webhook ``name`` delivers (shard 0)."""
        if self.shards == 1:
            return f"{self.base}:feed-hook:{{{name}}}"
        return f"{self.base}:feed-hook:{{{SHARD_TAGS[0]}}}{name}"

    def feed_fence(self, shard: int) -> str:
        """On a cluster: a shard's copy of :meth:`feed_lease` (one Redis: the lease itself)."""
        if self.shards == 1:
            return self.feed_lease()
        return f"{self.base}:feed-lease:{{{SHARD_TAGS[shard]}}}"


def encode_position(position: Position) -> bytes:
    """The ``pos`` field of a SKU hash."""
    return state_encoder.encode(position)


def decode_position(raw: bytes) -> Position:
    """A ``pos`` field back into a Position."""
    return position_decoder.decode(raw)


def encode_state(state: OrderState | RmaState) -> bytes:
    """The ``s`` field of an order or RMA hash."""
    return state_encoder.encode(state)


def decode_order(raw: bytes) -> OrderState:
    """The ``s`` field of an order hash."""
    return order_decoder.decode(raw)


def decode_rma(raw: bytes) -> RmaState:
    """The ``s`` field of an RMA hash."""
    return rma_decoder.decode(raw)


def state_mark(state: OrderState | RmaState) -> str:
    """The ``m`` field: how far a state has read its source partition, sorting in read order."""
    _, offset, index = state.wm
    return f"{offset:020d}:{index:06d}"


class Change(msgspec.Struct, frozen=True):
    """A change-stream entry for one written SKU: its version and served form."""

    sku: str
    version: int
    served: bytes
    #: The SKU's hold lines after the write, when it converted checkout holds.
    held: bytes | None = None
    #: ``correlation_id`` of the last event the write applied, when it had one (``cid``).
    correlation_id: str | None = None


class HeldChange(msgspec.Struct, frozen=True):
    """A change-stream entry for a change of one SKU's hold lines (no new position)."""

    sku: str
    held: bytes


class Reload(msgspec.Struct, frozen=True):
    """A change-stream entry telling followers the live model moved to another generation."""

    namespace: str
    generation: str


def change_fields(
    sku: str, version: int, served: bytes, correlation_id: str | None = None
) -> dict[str, str | int | bytes]:
    """The fields of a :class:`Change` entry (the batch script writes the same ones)."""
    fields: dict[str, str | int | bytes] = {
        SKU_FIELD: sku, VERSION_FIELD: version, SERVED_FIELD: served
    }
    if correlation_id:
        fields[CORRELATION_FIELD] = correlation_id
    return fields


def reload_fields(namespace: str, generation: str) -> dict[str, str]:
    """The fields of a :class:`Reload` entry."""
    return {RELOAD_FIELD: namespace, GENERATION_FIELD: generation}


def decode_change(fields: dict[bytes, bytes]) -> Change | HeldChange | Reload:
    """A change-stream entry's fields; raises ValueError (or KeyError) when malformed."""
    if _RELOAD in fields:
        return Reload(fields[_RELOAD].decode(), fields.get(_GENERATION, b"").decode())
    held = fields.get(_HELD)
    if held is not None and _SERVED not in fields:
        return HeldChange(fields[_SKU].decode(), held)
    cid = fields.get(_CID)
    return Change(
        fields[_SKU].decode(), int(fields[_VERSION]), fields[_SERVED], held,
        None if cid is None else cid.decode("utf-8", "replace"),
    )
