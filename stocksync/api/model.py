"""The in-memory availability model the API answers from, and its sync with Redis.

:class:`AvailabilityModel` holds, per SKU, one tuple (see :data:`Entry`): the
version, the node detail packed as msgpack, and per configured channel the
JSON document of ``GET /v1/availability/{sku}`` without detail. All three are
the bytes the worker wrote (:mod:`stocksync.store.served`): nothing is decoded
and encoded again on the way. A request without detail is a dict lookup and a
tuple index; a batch joins ready bytes; only ``detail=nodes`` encodes, from
the packed node numbers. Keeping each channel's document with its node detail
instead would add about 400 MB at 1,000,000 SKUs x 2 channels.

:class:`ModelSync` fills it through the store: at start it records the change
stream's last id, then loads every served form in pages (SCAN and an HGET per
key, one script call per page), then follows the stream with XREAD BLOCK from
the recorded id. On a Redis Cluster the model has a change stream per shard,
each followed by a reader of its own (a blocking XREAD may name the streams of
one slot only), all at once. It reconnects with backoff when Redis goes away
and resyncs from its last id, or reloads when entries it had not read were
trimmed or deleted, or the stream was reset. A version never goes backwards in memory,
except when the live generation changes (a rebuild, see
:mod:`stocksync.store.generation`): then the model is replaced by the new
generation's, which a reload entry on the old stream, or a changed generation
pointer, announces. When Redis lost the model (no identity marker) the sync
keeps serving what it has, reports ``model_lost``, and loads the rebuilt
generation once a worker has made it live.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from stocksync.codecs.events import IDENTIFIER_PATTERN
from stocksync.codecs.holds import (
    HeldDelta,
    HeldLine,
    HeldSnapshot,
    decode_held,
    snapshot_decoder,
)
from stocksync.codecs.projections import ChannelAvailability, Served
from stocksync.readmodel.core import status_of
from stocksync.readmodel.holds import (
    HeldLines,
    available_after_holds,
)
from stocksync.store import RedisStore, StoreUnavailable
from stocksync.store.holds import HoldStore
from stocksync.store.layout import HeldChange, Reload, decode_change
from stocksync.store.served import decode_detail, decode_served, detail_nodes, encode_detail
from stocksync.tasks import cancel_and_wait

__all__ = [
    "DETAIL_SLOT",
    "FIRST_CHANNEL_SLOT",
    "VERSION_SLOT",
    "AvailabilityModel",
    "Entry",
    "ModelSync",
    "StreamId",
    "SyncStatus",
    "is_identifier",
    "parse_stream_id",
]

log = logging.getLogger(__name__)

#: ``(version, packed node detail, channel 0 JSON or None, channel 1 JSON or None, ...)``.
#: One flat tuple per SKU: the smallest Python shape that still answers with one index.
Entry = tuple[Any, ...]
VERSION_SLOT: Final = 0
DETAIL_SLOT: Final = 1
FIRST_CHANNEL_SLOT: Final = 2

_identifier = re.compile(IDENTIFIER_PATTERN)
#: Served forms taken between two yields to the event loop while loading (~5 ms).
_YIELD_EVERY: Final = 1024
#: How long (ms) after its expiry a hold counted as expired is remembered, so that its
#: lines on other SKUs, seen to expire later, do not count it again.
_COUNTED_EXPIRED_MS: Final = 600_000
_COUNTED_EXPIRED_MIN: Final = 4096


def is_identifier(text: str) -> bool:
    """Tell whether ``text`` is a valid SKU, channel or node identifier."""
    return _identifier.match(text) is not None


_json_encoder = msgspec.json.Encoder()
_channel_decoder = msgspec.json.Decoder(ChannelAvailability)
_NODES_INFIX: Final = b',"nodes":'


def now_ms() -> int:
    """Milliseconds since the epoch: the clock hold expiries are compared with."""
    return time.time_ns() // 1_000_000


class AvailabilityModel:
    """Every known SKU's availability, as the worker wrote it: ready JSON per channel.

    Checkout holds are a second input: for a SKU with a hold snapshot, ``entries``
    holds the worker's entry (kept in ``base``) with each channel's active holds
    subtracted, ``held`` set and the served version, encoded again whenever the
    position, the holds or (at a line's expiry, see :meth:`expire`) the time changes.

    Without a :attr:`changed` listener (the API) that encoding waits for the first
    read: a change takes the SKU out of ``entries`` and :meth:`entry` encodes it
    when asked. Under a stream of holds most changes are never read before the
    next one, and every replica follows every hold. A reader that misses in
    ``entries`` asks :meth:`entry` (only misses pay for the look).
    """

    __slots__ = (
        "_counted_expired",
        "_counted_limit",
        "_scheduled",
        "_stale",
        "base",
        "changed",
        "channels",
        "entries",
        "expired_holds",
        "expiries",
        "generation",
        "held",
        "loaded",
        "slots",
        "thresholds",
        "wake",
    )

    def __init__(self, channels: Sequence[str], thresholds: Sequence[int] = ()) -> None:
        #: Configured channel names, in configuration order.
        self.channels: tuple[str, ...] = tuple(channels)
        #: Each channel's low-stock threshold (the status band of a figure less its holds).
        self.thresholds: tuple[int, ...] = tuple(thresholds) or (0,) * len(self.channels)
        #: SKU -> the worker's entry, for SKUs with a hold snapshot.
        self.base: dict[str, Entry] = {}
        #: SKU -> its hold lines and hold version, as Redis last published them.
        self.held: dict[str, HeldLines] = {}
        #: Heap of (expiry ms, SKU): when a SKU's answer next changes by itself.
        self.expiries: list[tuple[int, str]] = []
        # SKU -> the expiry it is due at in the heap: one live entry per SKU, so the
        # heap stays as small as the number of held SKUs however often they change.
        self._scheduled: dict[str, int] = {}
        # Held SKUs whose entry is out of ``entries`` until read (see entry()).
        self._stale: set[str] = set()
        #: Called when an expiry earlier than every other one is added.
        self.wake: Callable[[], None] | None = None
        #: Called with each SKU whose served entry was replaced (the feed follows this).
        self.changed: Callable[[str], None] | None = None
        #: Holds this replica saw expire (by its clock), for the metrics.
        self.expired_holds = 0
        # Hold id -> expiry (ms) of the holds counted in expired_holds lately, so a hold
        # is counted once whichever of its SKUs is seen to expire first; pruned of the
        # long expired once it outgrows _counted_limit.
        self._counted_expired: dict[str, int] = {}
        self._counted_limit = _COUNTED_EXPIRED_MIN
        #: Channel name -> index of its document in an :data:`Entry`.
        self.slots: dict[str, int] = {
            name: FIRST_CHANNEL_SLOT + i for i, name in enumerate(self.channels)
        }
        #: SKU -> :data:`Entry`. Handlers read it directly: it is the hot path.
        self.entries: dict[str, Entry] = {}
        #: True once the first full load from Redis has finished.
        self.loaded = False
        #: Id of the generation of the model held (changes on a rebuild; part of ETags);
        #: "" before the first load and while a load switches generations.
        self.generation = ""

    def __len__(self) -> int:
        return len(self.entries) + len(self._stale)

    def __contains__(self, sku: object) -> bool:
        return sku in self.entries or sku in self._stale

    def entry(self, sku: str) -> Entry | None:
        """``sku``'s entry, encoded now if a change left it to the first read; or None."""
        entry = self.entries.get(sku)
        if entry is None and sku in self._stale:
            self._render(sku, now_ms())
            entry = self.entries.get(sku)
        return entry

    def version(self, sku: str) -> int | None:
        """The position version held for ``sku`` (holds aside), or None if never seen."""
        entry = self.base.get(sku) or self.entries.get(sku)
        return None if entry is None else int(entry[VERSION_SLOT])

    def apply(self, served: Served, *, replace: bool = False) -> bool:
        """Hold ``served`` unless what is held is as new (or ``replace``); tell if taken."""
        sku = served.sku
        held = self.base.get(sku) or self.entries.get(sku)
        if not replace and held is not None and held[VERSION_SLOT] >= served.version:
            return False
        if not is_identifier(sku):
            raise ValueError(f"served form has an invalid SKU {sku!r}")
        names = tuple(c.channel for c in served.channels)
        if names == self.channels:  # the usual case: the worker's channels are ours
            entry = (served.version, served.detail, *(c.document for c in served.channels))
            if sku in self.held:
                self.base[sku] = entry
                self._refresh(sku, now_ms())
            else:
                self.entries[sku] = entry
                if self.changed is not None:
                    self.changed(sku)
            return True
        docs: list[bytes | None] = [None] * len(self.channels)
        written = decode_detail(served.detail)
        detail: list[list[tuple[str, int, int, int, int, int]]] = [[] for _ in self.channels]
        slots = self.slots
        for index, channel in enumerate(served.channels):
            slot = slots.get(channel.channel)
            if slot is None:
                continue  # a channel this API is not configured to serve
            docs[slot - FIRST_CHANNEL_SLOT] = channel.document
            detail[slot - FIRST_CHANNEL_SLOT] = written[index]
        entry = (served.version, encode_detail(detail), *docs)
        if sku in self.held:
            self.base[sku] = entry
            self._refresh(sku, now_ms())
        else:
            self.entries[sku] = entry
            if self.changed is not None:
                self.changed(sku)
        return True

    def apply_held(self, sku: str, snapshot: HeldSnapshot, *, replace: bool = False) -> bool:
        """Hold ``snapshot`` of ``sku``'s hold lines unless as new (or ``replace``)."""
        current = self.held.get(sku)
        if not replace and current is not None and current.version >= snapshot.version:
            return False
        now = now_ms()
        self.held[sku] = HeldLines.of(snapshot, now)
        self._held_changed(sku, now)
        return True

    def apply_delta(self, sku: str, delta: HeldDelta) -> bool | None:
        """Apply one change of ``sku``'s hold lines: True if applied, False if what is held
        is as new already, None if a change before it is missing (read the SKU again)."""
        current = self.held.get(sku)
        version = 0 if current is None else current.version
        if delta.after <= version:
            return False
        if delta.before != version:
            return None
        now = now_ms()
        if current is None:
            current = self.held[sku] = HeldLines(through=now)
        self._count_expired(current.advance(now))
        current.apply(delta, now)
        self._held_changed(sku, now)
        return True

    def _held_changed(self, sku: str, now: int) -> None:
        if sku not in self.base:
            entry = self.entries.get(sku)
            if entry is None:
                return  # served once its position arrives
            self.base[sku] = entry
        self._refresh(sku, now)

    def _count_expired(self, ended: Iterable[HeldLine]) -> None:
        """Count the holds of lines this replica saw expire (by its clock), each once.

        A hold's lines on several SKUs expire together but may be seen in separate calls
        (one SKU by the expiry timer, another by a change of its lines), so the holds
        counted are remembered until well after they expired.
        """
        counted = self._counted_expired
        for line in ended:
            if line.hold_id not in counted:
                counted[line.hold_id] = line.expires_ms
                self.expired_holds += 1
        if len(counted) > self._counted_limit:
            horizon = now_ms() - _COUNTED_EXPIRED_MS
            for hold_id in [h for h, at in counted.items() if at < horizon]:
                del counted[hold_id]
            self._counted_limit = max(_COUNTED_EXPIRED_MIN, 2 * len(counted))

    def _refresh(self, sku: str, now: int) -> None:
        """``sku``'s base entry or holds changed: encode it now, or at its first read."""
        if self.changed is not None:
            self._render(sku, now)  # the listener reads the entry at once
            return
        self.entries.pop(sku, None)
        self._stale.add(sku)
        self._schedule(sku)

    def _render(self, sku: str, now: int) -> None:
        """Serve ``sku``'s base entry less its active holds, at ``now``."""
        self._stale.discard(sku)
        base = self.base[sku]
        lines = self.held[sku]
        self._count_expired(lines.advance(now))
        held = lines.held
        version = lines.served_version(base[VERSION_SLOT])
        docs: list[bytes | None] = []
        for index, name in enumerate(self.channels):
            doc = base[FIRST_CHANNEL_SLOT + index]
            if doc is None:
                docs.append(None)
                continue
            channel = _channel_decoder.decode(doc)
            quantity = held.get(name, 0)
            available = available_after_holds(channel.available, quantity)
            docs.append(
                _json_encoder.encode(
                    msgspec.structs.replace(
                        channel,
                        available=available,
                        status=status_of(available, self.thresholds[index]),
                        version=version,
                        held=quantity,
                    )
                )
            )
        self.entries[sku] = (version, base[DETAIL_SLOT], *docs)
        if self.changed is not None:
            self.changed(sku)
        self._schedule(sku)

    def _schedule(self, sku: str) -> None:
        """Wake :meth:`expire` at the next expiry of ``sku``'s lines (one heap entry per SKU)."""
        upcoming = self.held[sku].next_expiry()
        if upcoming is not None:
            due = self._scheduled.get(sku)
            if due is not None and due <= upcoming:
                return  # an earlier wake-up is pending; it schedules the next one
            self._scheduled[sku] = upcoming
            earliest = self.expiries[0][0] if self.expiries else None
            heapq.heappush(self.expiries, (upcoming, sku))
            if self.wake is not None and (earliest is None or upcoming < earliest):
                self.wake()

    def next_expiry(self) -> int | None:
        """When (ms) the next held SKU's answer changes by itself, or None."""
        return self.expiries[0][0] if self.expiries else None

    def expire(self, now: int) -> int:
        """Serve again every SKU whose lines expired by ``now``; returns how many SKUs."""
        due: set[str] = set()
        expiries = self.expiries
        scheduled = self._scheduled
        while expiries and expiries[0][0] <= now:
            at, sku = heapq.heappop(expiries)
            if scheduled.get(sku) == at:  # else a stale entry: a later one was pushed
                del scheduled[sku]
                due.add(sku)
        for sku in due:
            if sku in self.held:
                self._count_expired(self.held[sku].advance(now))
        for sku in due:
            if sku in self.base:
                self._refresh(sku, now)
        return len(due)

    def holds_active(self, now: int) -> int:
        """How many holds have an active line, as this replica sees them."""
        return len(
            {
                line.hold_id
                for held in self.held.values()
                for line in held.lines.values()
                if line.expires_ms > now
            }
        )

    def holds_over(self, now: int) -> int:
        """How many (SKU, channel) hold more than the channel has before holds.

        A hold is granted only against what the channel has, but stock can fall
        afterwards (a count, a shipment from elsewhere): those carts hold units
        that are no longer there, the holds' form of overselling.
        """
        over = 0
        for sku, held in self.held.items():
            base = self.base.get(sku)
            if base is None:
                continue
            # As of the SKU's last look at its lines (its expiries wake expire()).
            for name, quantity in held.held.items():
                slot = self.slots.get(name)
                doc = None if slot is None else base[slot]
                if doc is not None and quantity > _channel_decoder.decode(doc).available:
                    over += 1
        return over

    def apply_encoded(self, raw: bytes, *, replace: bool = False) -> str | None:
        """Decode a stored served form and :meth:`apply` it; its SKU if taken."""
        served = decode_served(raw)
        return served.sku if self.apply(served, replace=replace) else None

    def retain(self, skus: set[str]) -> int:
        """Forget every SKU not in ``skus``; return how many were forgotten."""
        gone = [sku for sku in self.entries if sku not in skus]
        for sku in gone:
            del self.entries[sku]
            self.base.pop(sku, None)
        stale = [sku for sku in self._stale if sku not in skus]
        for sku in stale:
            self._stale.discard(sku)
            self.base.pop(sku, None)
        return len(gone) + len(stale)

    def retain_held(self, skus: set[str]) -> None:
        """Forget the hold snapshots of SKUs not in ``skus`` (after a reload)."""
        for sku in [s for s in self.held if s not in skus]:
            del self.held[sku]
            self._stale.discard(sku)
            base = self.base.pop(sku, None)
            if base is not None:
                self.entries[sku] = base

    def document(self, sku: str, channel: str, *, detail: bool = False) -> bytes | None:
        """The JSON answer for ``sku`` on ``channel``, or None if unknown there."""
        entry = self.entry(sku)
        slot = self.slots.get(channel)
        if entry is None or slot is None:
            return None
        return detail_document(entry, slot) if detail else entry[slot]


def detail_document(entry: Entry, slot: int) -> bytes | None:
    """The channel document of ``entry`` with its ``nodes`` added, or None if absent."""
    doc: bytes | None = entry[slot]
    if doc is None:
        return None
    nodes = detail_nodes(entry[DETAIL_SLOT], slot - FIRST_CHANNEL_SLOT)
    # ``nodes`` is the last field of ChannelAvailability, so this is what
    # encoding the whole Struct would give.
    return b"".join((doc[:-1], _NODES_INFIX, _json_encoder.encode(nodes), b"}"))


# --- stream ids ---------------------------------------------------------------

#: A Redis stream id as ``(milliseconds, sequence)``, ordered like Redis orders them.
StreamId = tuple[int, int]
_ZERO_ID: Final[StreamId] = (0, 0)


def parse_stream_id(raw: bytes | str) -> StreamId:
    """``b"1700000000000-3"`` -> ``(1700000000000, 3)``."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


@dataclass(frozen=True, slots=True)
class _StreamInfo:
    """The facts of XINFO STREAM the follower needs (``exists`` False: no stream yet)."""

    exists: bool
    last_generated: StreamId = _ZERO_ID
    entries_added: int = 0
    length: int = 0
    first_entry: StreamId | None = None
    max_deleted: StreamId = _ZERO_ID


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """A snapshot of the sync's health, for ``/readyz`` and ``/metrics``."""

    ready: bool
    reason: str
    loaded: bool
    connected: bool
    skus: int
    entries_behind: int
    lag_seconds: float
    last_applied_at: float | None
    reloads: int
    redis_errors: int
    invalid_projections: int
    applied_changes: int
    #: Changes of a SKU's hold lines that did not follow the lines held (the SKU was read again).
    held_rereads: int = 0
    #: The error code of ``/readyz`` when not ready: ``not_ready`` or ``model_lost``.
    code: str = "not_ready"
    #: Id of the generation of the model served ("" before the first load).
    generation: str = ""


# --- sync --------------------------------------------------------------------


class ModelSync:
    """Loads the model from Redis, then follows the change stream; reports its health.

    When Redis loses the model (its identity marker is gone) the sync keeps the
    model it has, says ``model_lost``, and loads the next generation as soon as
    one is live (a worker rebuilds it).
    """

    def __init__(
        self,
        model: AvailabilityModel,
        store: RedisStore,
        *,
        load_page: int = 5000,
        read_count: int = 1000,
        block_ms: int = 1000,
        monitor_interval: float = 0.5,
        max_lag_seconds: float = 5.0,
        backoff_min: float = 0.05,
        backoff_max: float = 5.0,
        gather_s: float = 0.002,
    ) -> None:
        self.model = model
        #: Pause after reading some entries and catching up, before the next read.
        self.gather_s = gather_s
        self.store = store
        self.load_page = load_page
        self.read_count = read_count
        self.block_ms = block_ms
        self.monitor_interval = monitor_interval
        self.max_lag_seconds = max_lag_seconds
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        # Per change stream (one per shard of the model; one on one Redis): our position,
        # and entries-added of that stream at our position (lag = entries-added - this).
        self._last_ids: list[StreamId] = [_ZERO_ID] * store.keys.shards
        self._counts: list[int] = [0] * store.keys.shards
        # Bumped by every load, so a check that straddled one is discarded.
        self._loads = 0
        self._needs_load = True
        self._needs_check = False
        self._loading = False
        self._lost = False
        self._caught_up = False
        # Per shard: caught up with its stream since the last load (all: ``_caught_up``).
        self._shard_caught_up: list[bool] = [False] * store.keys.shards
        # Shards whose reader is backing off after a Redis error.
        self._failing: set[int] = set()
        # Set when a load is due: every shard's reader stops, even one that is blocked.
        self._stop = asyncio.Event()
        self._follower_ok = False
        self._monitor_ok = False
        self._entries_behind = 0
        self._lag_seconds = 0.0
        self._last_applied_at: float | None = None
        self._reloads = 0
        self._redis_errors = 0
        self._invalid = 0
        self._applied = 0
        self._tasks: list[asyncio.Task[None]] = []
        #: Set by stop(): the shard readers end at their next turn.
        self._closing = False
        #: Where the hold snapshots are loaded from (None: this replica ignores holds).
        self.holds: HoldStore | None = None
        #: Changes of hold lines that did not follow the lines held (each read the SKU again).
        self.held_gaps = 0
        #: While a change-stream entry is applied: its time (ms, when it reached Redis) and
        #: the causing event's correlation id; ``(0, None)`` otherwise (a load, an expiry).
        self.applying: tuple[int, str | None] = (0, None)
        self._wake = asyncio.Event()
        model.wake = self._wake.set

    # --- lifecycle ---

    async def start(self) -> None:
        """Start loading and following in background tasks."""
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._follow(), name="stocksync-api-follow"),
            asyncio.create_task(self._monitor(), name="stocksync-api-monitor"),
            asyncio.create_task(self._expire(), name="stocksync-api-hold-expiry"),
        ]

    async def stop(self) -> None:
        """Cancel the background tasks and wait for them."""
        self._closing = True  # readers end even if a cancellation of theirs was swallowed
        await cancel_and_wait(self._tasks)
        self._tasks = []

    # --- health ---

    def status(self) -> SyncStatus:
        """Readiness and the figures behind it."""
        connected = self._follower_ok and self._monitor_ok
        code = "not_ready"
        if self._lost:
            code = "model_lost"
            reason = (
                "Redis lost the model; serving the last one until a worker has rebuilt it"
                if self.model.loaded
                else "Redis lost the model; waiting until a worker has rebuilt it"
            )
        elif not self.model.loaded or self._loading:
            reason = "loading the model from Redis"
        elif self._needs_load:
            reason = "the change stream lost entries; reloading"
        elif not connected:
            reason = "Redis is unreachable; serving the last known model"
        elif not self._caught_up:
            reason = "catching up with the change stream"
        elif self._lag_seconds > self.max_lag_seconds:
            reason = f"{self._lag_seconds:.1f} s behind the change stream"
        else:
            reason = ""
        return SyncStatus(
            ready=not reason,
            reason=reason or "following the change stream",
            loaded=self.model.loaded,
            connected=connected,
            skus=len(self.model),
            entries_behind=self._entries_behind,
            lag_seconds=self._lag_seconds,
            last_applied_at=self._last_applied_at,
            reloads=self._reloads,
            redis_errors=self._redis_errors,
            invalid_projections=self._invalid,
            applied_changes=self._applied,
            held_rereads=self.held_gaps,
            code=code,
            generation=self.model.generation,
        )

    # --- follower ---

    async def _follow(self) -> None:
        backoff = self.backoff_min
        while True:
            try:
                if self._lost:
                    await self._await_model()
                if self._needs_check:
                    await self._check_stream()
                    self._needs_check = False
                if self._needs_load:
                    await self._load()
                    if self._lost:
                        continue
                    await self._measure()  # readiness need not wait for the monitor's tick
                    self._monitor_ok = True
                if backoff != self.backoff_min:
                    log.info("Redis answers again; following the change streams")
                backoff = self.backoff_min
                await self._read_changes()
            except StoreUnavailable as exc:
                self._loading = False
                self._redis_errors += 1
                if self._follower_ok or backoff == self.backoff_min:
                    log.warning("Redis failed (%s); retrying in %.2f s", exc, backoff)
                self._follower_ok = False
                self._needs_check = True
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.backoff_max)

    def _request_load(self) -> None:
        """Load the model again: every shard's reader stops at once, blocked or not."""
        self._needs_load = True
        self._stop.set()

    def _model_lost(self) -> None:
        if not self._lost:
            log.error(
                "Redis lost the model %r (no identity marker under %s:); serving the last"
                " model (%d SKUs) until a worker has rebuilt it",
                self.model.generation, self.store.namespace, len(self.model),
            )
        self._lost = True
        self._request_load()

    async def _await_model(self) -> None:
        """Wait until a live generation with its identity marker is in Redis."""
        while True:
            _namespace, generation = await self.store.live_namespace()
            self._follower_ok = self._monitor_ok = True
            if generation is not None:
                log.info("a rebuilt model is live (generation %s); loading it", generation)
                self._lost = False
                self._needs_load = True
                return
            await asyncio.sleep(self.monitor_interval)

    async def _read_changes(self) -> None:
        """Follow every shard's change stream, until a load is due.

        Each shard has a reader of its own that waits in XREAD BLOCK on its stream
        alone (a blocking read may name the streams of one slot only), so an idle
        replica costs one read per shard per ``block_ms`` and a busy shard never
        waits for an idle one. A reload entry on any shard, lost entries or a lost
        model stop every reader (a blocked read is cancelled; redis-py closes its
        connection, which connects again when next taken from the pool), and the
        load then reads every shard's position anew. Redis errors are each reader's
        own: it backs off and checks its stream while the others go on.
        """
        self._stop.clear()
        if self._needs_load or self._lost:
            return
        self._failing.clear()
        readers = [
            asyncio.create_task(self._follow_shard(shard), name=f"stocksync-api-follow-{shard}")
            for shard in range(len(self._last_ids))
        ]
        stop = asyncio.create_task(self._stop.wait(), name="stocksync-api-follow-stop")
        try:
            done, _ = await asyncio.wait([stop, *readers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Every reader ends before this does, even when this is cancelled meanwhile
            # (stop() cancels again while the readers are still ending): a reader left
            # running would outlive the sync and keep a connection reading for ever.
            ending = asyncio.ensure_future(cancel_and_wait([stop, *readers]))
            cancelled = False
            while not ending.done():
                try:
                    await asyncio.shield(ending)
                except asyncio.CancelledError:
                    cancelled = True
            if cancelled:
                raise asyncio.CancelledError
        for task in done:
            if task is not stop:
                task.result()  # a reader's failure other than Redis's is the follower's

    async def _follow_shard(self, shard: int) -> None:
        """Apply one shard's change entries as they come, until a load is due."""
        backoff = self.backoff_min
        failed = False
        while not (self._needs_load or self._lost or self._closing):
            try:
                if failed:
                    # The stream may have been trimmed past us or reset meanwhile.
                    await self._check_stream((shard,))
                    if self._needs_load or self._lost:
                        return
                # Until caught up, read without waiting: an empty answer means caught up.
                caught_up = self._shard_caught_up[shard]
                done = await self._read_shard(shard, self.block_ms if caught_up else None)
            except StoreUnavailable as exc:
                self._redis_errors += 1
                if backoff == self.backoff_min:
                    log.warning(
                        "Redis failed reading %s (%s); retrying in %.2f s",
                        self.store.keys.changes(shard), exc, backoff,
                    )
                failed = True
                self._failing.add(shard)
                self._follower_ok = False
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.backoff_max)
                continue
            if failed:
                log.info("following the change stream %s again", self.store.keys.changes(shard))
                failed = False
                self._failing.discard(shard)
                backoff = self.backoff_min
            self._follower_ok = not self._failing
            if done and not caught_up and not self._needs_load:
                self._shard_caught_up[shard] = True
                if all(self._shard_caught_up):
                    self._caught_up = True

    async def _read_shard(self, shard: int, block_ms: int | None) -> bool:
        """Apply the next entries of one shard's stream; tell whether it is caught up."""
        entries = await self.store.read_changes(
            _format_id(self._last_ids[shard]), self.read_count, block_ms, shard
        )
        total = 0
        for entry_id, fields in entries:
            try:
                change = decode_change(fields)
            except (KeyError, ValueError) as exc:
                self._invalid += 1
                log.error("skipping an invalid change-stream entry: %s", exc)
                change = None
            if isinstance(change, Reload):
                log.info("the live generation moved to %r; reloading the model", change.namespace)
                self._request_load()
                return True  # the rest of this stream no longer matters
            stream_id = parse_stream_id(entry_id)
            self.applying = (stream_id[0], None)
            if isinstance(change, HeldChange):
                await self._apply_held(change.sku, change.held)
            elif change is not None:
                applying = self.applying = (stream_id[0], change.correlation_id)
                if change.held is not None:
                    # A conversion: the holds first, so the new position is served less
                    # the holds that remain, in the same step.
                    await self._apply_held(change.sku, change.held)
                    self.applying = applying  # another shard's reader may have run meanwhile
                self._apply_change(change.sku, change.version, change.served)
            self.applying = (0, None)
            self._last_ids[shard] = stream_id
            total += 1
        if total:
            self._counts[shard] += total
            self._last_applied_at = time.time()
        if total < self.read_count and total and self.gather_s:
            # Let the next entries gather: under a stream of holds (one entry each)
            # a read per entry costs each replica more than the hold itself.
            await asyncio.sleep(self.gather_s)
        return total < self.read_count

    async def _apply_held(self, sku: str, raw: bytes) -> None:
        """A change of ``sku``'s hold lines: a delta (or an older writer's snapshot). A
        delta that does not follow the lines held (a change was missed: a trimmed
        stream, a load that raced the change) makes the SKU's lines be read again."""
        try:
            change = decode_held(raw)
            if isinstance(change, HeldSnapshot):
                applied: bool | None = self.model.apply_held(sku, change)
            else:
                applied = self.model.apply_delta(sku, change)
                if applied is None:
                    self.held_gaps += 1
                    applied = await self._read_held(sku)
            if applied:
                self._applied += 1
        except (ValueError, msgspec.DecodeError) as exc:
            self._invalid += 1
            log.error("skipping an invalid change of hold lines: %s", exc)

    async def _read_held(self, sku: str) -> bool:
        """Replace ``sku``'s lines by what Redis holds now."""
        if self.holds is None:
            return False
        applying = self.applying
        raw = await self.holds.held_one(sku)
        # On a cluster another shard's reader may have applied entries meanwhile.
        self.applying = applying
        return self.model.apply_held(sku, snapshot_decoder.decode(raw), replace=True)

    def _apply_change(self, sku: str, version: int, served: bytes) -> None:
        held = self.model.version(sku)
        if held is not None and held >= version:
            return
        try:
            if self.model.apply_encoded(served):
                self._applied += 1
        except (ValueError, msgspec.DecodeError) as exc:
            self._invalid += 1
            log.error("skipping an invalid change-stream entry: %s", exc)

    async def _load(self) -> None:
        """Load every served SKU, recording the stream position first."""
        self._loading = True
        first = not self.model.loaded
        before = self.store.namespace
        namespace = await self.store.resolve()
        generation = self.store.generation
        if generation is None:
            self._loading = False
            self._model_lost()
            return
        replace = generation != self.model.generation and not first
        if replace:
            # Entries of both generations are held until the load ends: no ETag holds.
            self.model.generation = ""
        if namespace != before:
            log.info("the live model is under %r", namespace)
        infos = [await self._stream_info(i) for i in range(len(self._last_ids))]
        started = time.perf_counter()
        seen = 0
        kept: set[str] = set()  # with replace: the SKUs of the new generation
        log.info("loading the availability model from Redis (%s:sku:*)", namespace)
        # Redis prepares the next page while this process decodes the current one.
        pending = asyncio.ensure_future(self.store.served_page(0, self.load_page))
        try:
            while True:
                cursor, values = await pending
                if cursor != 0:
                    pending = asyncio.ensure_future(self.store.served_page(cursor, self.load_page))
                for i, raw in enumerate(values):
                    if i % _YIELD_EVERY == 0:
                        # Let the next page's commands go out, and requests be served.
                        await asyncio.sleep(0)
                    try:
                        taken = self.model.apply_encoded(raw, replace=replace)
                        if replace and taken is not None:
                            kept.add(taken)
                    except (ValueError, msgspec.DecodeError) as exc:
                        self._invalid += 1
                        log.error("skipping an invalid stored served form: %s", exc)
                seen += len(values)
                elapsed = time.perf_counter() - started
                log.debug(
                    "loaded %d SKU keys in %.1f s (%.0f/s); model holds %d SKUs",
                    seen,
                    elapsed,
                    seen / elapsed if elapsed else 0.0,
                    len(self.model),
                )
                if cursor == 0:
                    break
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StoreUnavailable):
                    await pending
        if not await self.store.model_present():
            # Lost while loading: what was taken from the new generation may be partial.
            self._loading = False
            self._model_lost()
            return
        if replace:
            dropped = self.model.retain(kept)
            log.info("generation switch: %d SKUs not in the new generation dropped", dropped)
        await self._load_held(replace=not first)
        self._last_ids = [info.last_generated for info in infos]
        self._counts = [info.entries_added for info in infos]
        self._loads += 1
        self._caught_up = False
        self._shard_caught_up = [False] * len(infos)
        self._needs_load = False
        self._loading = False
        self.model.generation = generation
        self.model.loaded = True
        self._last_applied_at = time.time()
        if not first:
            self._reloads += 1
        log.info(
            "model loaded: %d SKUs in %.1f s (generation %s); following %s from %s",
            len(self.model),
            time.perf_counter() - started,
            generation,
            self.store.keys.changes(),
            ", ".join(_format_id(info.last_generated) for info in infos),
        )

    async def _load_held(self, *, replace: bool) -> None:
        """Load every SKU's hold snapshot (holds live in the base namespace)."""
        holds = self.holds
        if holds is None:
            return
        cursor = 0
        seen: set[str] = set()
        while True:
            cursor, pairs = await holds.held_page(cursor, self.load_page)
            for sku, raw in pairs:
                try:
                    self.model.apply_held(sku, snapshot_decoder.decode(raw), replace=replace)
                    seen.add(sku)
                except (ValueError, msgspec.DecodeError) as exc:
                    self._invalid += 1
                    log.error("skipping an invalid stored hold snapshot: %s", exc)
            if cursor == 0:
                break
            await asyncio.sleep(0)
        if replace:
            self.model.retain_held(seen)
        if seen:
            log.info("hold lines of %d SKUs loaded", len(seen))

    async def _expire(self) -> None:
        """Serve held SKUs again as their lines expire, without waiting for any event."""
        model = self.model
        while True:
            upcoming = model.next_expiry()
            timeout = None if upcoming is None else max(0.0, (upcoming - now_ms() + 1) / 1000)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            model.expire(now_ms())

    # --- stream checks ---

    async def _stream_info(self, shard: int = 0) -> _StreamInfo:
        raw = await self.store.changes_info(shard)
        if raw is None:
            return _StreamInfo(exists=False)
        first = raw.get("first-entry")
        return _StreamInfo(
            exists=True,
            last_generated=parse_stream_id(raw["last-generated-id"]),
            entries_added=int(raw.get("entries-added", 0)),
            length=int(raw["length"]),
            first_entry=parse_stream_id(first[0]) if first else None,
            max_deleted=parse_stream_id(raw.get("max-deleted-entry-id", b"0-0")),
        )

    @staticmethod
    def _lost_entries(info: _StreamInfo, last: StreamId, count: int) -> str | None:
        """Why entries after ``last`` were lost unread (only a reload is exact), or None.

        ``last`` and ``count`` (entries-added when ``last`` was the newest entry)
        must be read before ``info`` was fetched. Entries we read are counted, so
        once caught up, entries-added must equal our count: a difference means
        we skipped entries that were trimmed or deleted before we read them,
        however long ago that was.
        """
        if not info.exists:
            return None if last == _ZERO_ID else "the change stream disappeared"
        if info.last_generated < last:
            return "the change stream was reset (its last id is older than ours)"
        if info.max_deleted > last:
            return "entries after ours were deleted from the change stream"
        unread = info.entries_added - count
        if unread < 0:
            return "the change stream was recreated"
        if info.first_entry is None or info.first_entry > last:
            # Every entry left is newer than ours, so all of them are unread.
            if info.length < unread:
                return "the change stream was trimmed past our position"
        elif info.last_generated == last and unread:
            return "entries were lost before we read them"
        return None

    async def _check_stream(self, shards: Sequence[int] | None = None) -> None:
        """After a Redis error: reload when the model or unread entries were lost."""
        if shards is None:
            shards = range(len(self._last_ids))
        positions = [(shard, self._last_ids[shard], self._counts[shard]) for shard in shards]
        if self.model.loaded and not await self.store.model_present():
            self._model_lost()
            return
        for shard, last, count in positions:
            info = await self._stream_info(shard)
            reason = self._lost_entries(info, last, count)
            if reason is not None and self.model.loaded:
                log.warning("%s; reloading the model", reason)
                self._request_load()
                return

    # --- monitor ---

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(self.monitor_interval)
            if not self.model.loaded or self._loading or self._needs_load or self._lost:
                continue
            try:
                await self._measure()
                self._monitor_ok = True
            except StoreUnavailable as exc:
                if self._monitor_ok:
                    log.warning("Redis failed while measuring lag: %s", exc)
                self._redis_errors += 1
                self._monitor_ok = False

    async def _measure(self) -> None:
        """Measure how far behind the stream the model is; spot lost entries and a lost model."""
        lasts, counts, loads = list(self._last_ids), list(self._counts), self._loads
        namespace, generation = await self.store.live_namespace()
        if namespace == self.store.namespace:
            # The live namespace is ours: the markers just read tell whether our model
            # is there (on a cluster reading them again would be 12 more commands).
            present = generation is not None and generation == self.store.generation
        else:
            present = await self.store.model_present()
        infos = [await self._stream_info(i) for i in range(len(lasts))]
        if loads != self._loads:
            return  # a load moved our position meanwhile: this answer is about the old one
        if not present and generation is None:
            self._model_lost()
            return
        if namespace != self.store.namespace or generation != self.model.generation:
            # e.g. a rollback, which appends no reload entry
            log.info("the live generation is now %r; reloading the model", namespace)
            self._request_load()
            return
        behind, lag = 0, 0.0
        for shard, info in enumerate(infos):
            reason = self._lost_entries(info, lasts[shard], counts[shard])
            if reason is not None:
                log.warning("%s; reloading the model", reason)
                self._request_load()
                return
            unread = max(0, info.entries_added - self._counts[shard]) if info.exists else 0
            behind += unread
            if unread:
                after = await self.store.first_change_after(
                    _format_id(self._last_ids[shard]), shard
                )
                if after is not None:
                    now = await self.store.server_time()
                    oldest_unread_ms = parse_stream_id(after)[0]
                    lag = max(lag, now - oldest_unread_ms / 1000)
        self._entries_behind = behind
        self._lag_seconds = lag
