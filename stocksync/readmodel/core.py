"""The pure availability core: the semantics of ``contracts/events-v1.md``, with no I/O.

Two halves:

* **Translation** turns one valid event into per-SKU effects
  (:mod:`stocksync.codecs.effects`). Stock events translate alone; order and
  return events need their order's or RMA's state, which translation updates.
  An event that names an unknown order, RMA or line is rejected here with a
  reason and changes nothing.
* **Application** folds effects into the :class:`Position` of one SKU, skipping
  any effect at or below its source partition's watermark and any stock event
  whose (``source``, ``event_id``) was already applied within the window; and
  **projection** turns a position into what the API serves per channel.

Times are :data:`~stocksync.codecs.events.Instant` pairs, compared at full
precision; ties of ``as_of`` (snapshots) and ``occurred_at`` (policies) go to
the greater (``source``, ``event_id``) pair, whatever the arrival order
(contract, "Clarifications (2026-12)").

Everything here is a plain function over msgspec Structs. Positions and
order/RMA states are updated in place (the applier's hot path); use
:func:`copy_position` where the old value must survive.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import cast

import msgspec

from stocksync.codecs.effects import Adjust, Effect, Policy, Quarantine, Reserve, Snapshot
from stocksync.codecs.events import (
    Event,
    EventKey,
    OrderAllocated,
    OrderCancelled,
    OrderCreated,
    OrderEvent,
    OrderShipped,
    ReturnAuthorized,
    ReturnEvent,
    ReturnInspected,
    ReturnReceived,
    StockAdjusted,
    StockEvent,
    StockPolicy,
    StockSnapshot,
    instant_of,
)
from stocksync.codecs.messages import Reason
from stocksync.codecs.projections import (
    ChannelAvailability,
    NodeAvailability,
    SkuProjection,
    Status,
)
from stocksync.codecs.state import NodePosition, OrderLine, OrderState, Position, RmaLine, RmaState
from stocksync.config.settings import Settings

__all__ = [
    "ChannelSpec",
    "NodeView",
    "Rejected",
    "Skipped",
    "SourceRef",
    "Topology",
    "Translated",
    "apply_effect",
    "apply_effects",
    "channel_available",
    "check_placement",
    "copy_position",
    "format_millis",
    "is_oversold",
    "key_of",
    "node_view",
    "project",
    "prune_seen",
    "remember_key",
    "status_of",
    "topology_of",
    "translate",
    "translate_order",
    "translate_return",
    "translate_stock",
]


# --- configuration the core needs ------------------------------------------------------


class ChannelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A channel: the nodes it sells from, its buffer and its low-stock band."""

    name: str
    nodes: tuple[str, ...]
    buffer: int = 0
    low_stock_threshold: int = 0


class Topology(msgspec.Struct, frozen=True, kw_only=True):
    """The configured channels and per-node default safety stock."""

    channels: tuple[ChannelSpec, ...]
    safety_defaults: dict[str, int] = msgspec.field(default_factory=dict)

    def default_safety(self, node: str) -> int:
        """Safety stock of ``node`` when no ``stock.policy`` set one."""
        return self.safety_defaults.get(node, 0)


# --- where an event came from -------------------------------------------------------------


class SourceRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Where an event was read: the source of its effects' deterministic ids."""

    #: ``stock``, ``orders`` or ``returns``.
    kind: str
    partition: int
    offset: int
    #: Index in a bulk message; 0 for a single-event message.
    index: int = 0
    #: When the message was produced (ms since epoch), for freshness.
    produced: int = 0
    #: The topic's name. Watermarks are kept per topic name, so a model that outlives its
    #: topics (new prefix, recreated broker) never mistakes new offsets for old ones.
    topic: str = ""
    #: Which incarnation of the topic partition this is (0: the first the worker saw); a
    #: topic deleted and created again restarts its offsets (stocksync.agents.incarnations).
    incarnation: int = 0

    @property
    def src(self) -> str:
        """The watermark key of this source partition (and incarnation, after the first)."""
        base = f"{self.topic or self.kind}/{self.partition}"
        return f"{base}#{self.incarnation}" if self.incarnation else base


class Translated(msgspec.Struct, frozen=True, gc=False):
    """A valid event's effects, in order."""

    effects: list[Effect]


class Rejected(msgspec.Struct, frozen=True):
    """An invalid event: it changes nothing and goes to the dead-letter topic."""

    reason: str
    message: str


class Skipped(msgspec.Struct, frozen=True):
    """An event already applied: a redelivery or a producer's second copy."""

    why: str


Outcome = Translated | Rejected | Skipped


# --- translation: stock ---------------------------------------------------------------


def translate_stock(event: StockEvent, ref: SourceRef) -> Translated:
    """The one effect of a stock event (de-duplicated later, by the applier)."""
    src, ofs, idx, produced = ref.src, ref.offset, ref.index, ref.produced
    eid, cid = (event.source, event.event_id), event.correlation_id
    at = instant_of(event.occurred_at)
    effect: Effect
    if isinstance(event, StockSnapshot):
        effect = Snapshot(
            sku=event.sku, src=src, ofs=ofs, idx=idx, seq=0, eid=eid, at=at, produced=produced,
            cid=cid, node=event.node, on_hand=event.on_hand, as_of=instant_of(event.as_of),
        )
    elif isinstance(event, StockAdjusted):
        effect = Adjust(
            sku=event.sku, src=src, ofs=ofs, idx=idx, seq=0, eid=eid, at=at, produced=produced,
            cid=cid, node=event.node, delta=event.delta,
        )
    else:
        effect = Policy(
            sku=event.sku, src=src, ofs=ofs, idx=idx, seq=0, eid=eid, at=at, produced=produced,
            cid=cid, node=event.node, safety_stock=event.safety_stock,
        )
    return Translated([effect])


# --- translation: orders and returns -----------------------------------------------------


class _Emitter:
    """Numbers the effects of one event and builds them (without ``eid``: the translator
    de-duplicates these events)."""

    __slots__ = ("at", "cid", "effects", "idx", "ofs", "produced", "src")

    def __init__(self, event: Event, ref: SourceRef) -> None:
        self.src, self.ofs, self.idx, self.produced = ref.src, ref.offset, ref.index, ref.produced
        self.at = instant_of(event.occurred_at)
        self.cid = event.correlation_id
        self.effects: list[Effect] = []

    def reserve(self, sku: str, node: str | None, channel: str, qty: int) -> None:
        """Change open reservations at ``node``, or on ``channel`` when unallocated."""
        if qty:
            self.effects.append(Reserve(
                sku=sku, src=self.src, ofs=self.ofs, idx=self.idx, seq=len(self.effects),
                eid=None, at=self.at, produced=self.produced, cid=self.cid,
                node=node, channel=None if node else channel, qty=qty,
            ))

    def adjust(self, sku: str, node: str, delta: int) -> None:
        """A physical change at ``node`` at the event's ``occurred_at``."""
        self.effects.append(Adjust(
            sku=sku, src=self.src, ofs=self.ofs, idx=self.idx, seq=len(self.effects),
            eid=None, at=self.at, produced=self.produced, cid=self.cid,
            node=node, delta=delta,
        ))

    def quarantine(self, sku: str, node: str, received: int, inspected: int) -> None:
        """Units into or out of quarantine at ``node``."""
        self.effects.append(Quarantine(
            sku=sku, src=self.src, ofs=self.ofs, idx=self.idx, seq=len(self.effects),
            eid=None, at=self.at, produced=self.produced, cid=self.cid,
            node=node, received=received, inspected=inspected,
        ))


def _replayed(
    state: OrderState | RmaState, event: Event, ref: SourceRef, now_ms: int, window_ms: int
) -> Skipped | None:
    wm = state.wm
    if state.src == ref.src and (ref.offset, ref.index) <= (wm[1], wm[2]):
        return Skipped("redelivered")
    seen_at = state.seen.get((event.source, event.event_id))
    if seen_at is not None and now_ms - seen_at < window_ms:
        return Skipped("duplicate")
    return None


def prune_seen(seen: dict[EventKey, int], now_ms: int, window_ms: int) -> None:
    """Forget idempotency keys older than the de-duplication window.

    Keys are kept in the order they were seen (see :func:`remember_key`), so the
    oldest come first and pruning stops at the first one still inside the window:
    O(1) per event when nothing expires, instead of a scan of the whole window.
    """
    while seen:
        key = next(iter(seen))
        if now_ms - seen[key] < window_ms:
            return
        del seen[key]


def remember_key(seen: dict[EventKey, int], key: EventKey, now_ms: int) -> None:
    """Record an idempotency key as seen now, keeping ``seen`` in the order keys were seen."""
    seen.pop(key, None)
    seen[key] = now_ms


def _missing_lines(
    state_lines: Mapping[str, object], wanted: Iterable[str], what: str
) -> Rejected | None:
    for line_id in wanted:
        if line_id not in state_lines:
            return Rejected(Reason.UNKNOWN_LINE, f"{what} has no line {line_id!r}")
    return None


def _release(emit: _Emitter, channel: str, line: OrderLine, qty: int) -> None:
    """Release up to ``qty`` of a line's open reservation, wherever it sits."""
    released = min(qty, line.open)
    emit.reserve(line.sku, line.node, channel, -released)
    line.open -= released


def translate_order(
    event: OrderEvent,
    state: OrderState | None,
    ref: SourceRef,
    now_ms: int,
    window_ms: int,
) -> tuple[Outcome, OrderState | None]:
    """Translate an order event against its order's state; returns the outcome and the new state.

    The state is updated in place (and created for ``order.created``) only when
    the outcome is :class:`Translated`.
    """
    if state is not None:
        skipped = _replayed(state, event, ref, now_ms, window_ms)
        if skipped is not None:
            return skipped, state
    emit = _Emitter(event, ref)
    if isinstance(event, OrderCreated):
        if state is not None:
            return Rejected(
                Reason.ORDER_EXISTS,
                f"order {event.order_id!r} was already created (by another event_id)",
            ), state
        state = OrderState(order_id=event.order_id, channel=event.channel)
        for new in event.lines:
            state.lines[new.line_id] = OrderLine(sku=new.sku, open=new.qty, node=new.node)
            emit.reserve(new.sku, new.node, event.channel, new.qty)
    elif state is None:
        return Rejected(Reason.UNKNOWN_ORDER, f"order {event.order_id!r} is unknown"), None
    else:
        named = (ln.line_id for ln in event.lines or ())
        missing = _missing_lines(state.lines, named, "the order")
        if missing:
            return missing, state
        if isinstance(event, OrderAllocated):
            for alloc in event.lines:
                line = state.lines[alloc.line_id]
                if line.node == alloc.node:
                    continue
                emit.reserve(line.sku, line.node, state.channel, -line.open)
                emit.reserve(line.sku, alloc.node, state.channel, line.open)
                line.node = alloc.node
        elif isinstance(event, OrderCancelled):
            if event.lines is None:
                for line in state.lines.values():
                    _release(emit, state.channel, line, line.open)
            else:
                for cancel in event.lines:
                    _release(emit, state.channel, state.lines[cancel.line_id], cancel.qty)
        else:
            for ship in event.lines:
                line = state.lines[ship.line_id]
                _release(emit, state.channel, line, ship.qty)
                emit.adjust(line.sku, event.node, -ship.qty)
    _remember(state, event, ref, now_ms, window_ms)
    return Translated(emit.effects), state


def translate_return(
    event: ReturnEvent,
    state: RmaState | None,
    ref: SourceRef,
    now_ms: int,
    window_ms: int,
) -> tuple[Outcome, RmaState | None]:
    """Translate a return event against its RMA's state; returns the outcome and the new state."""
    if state is not None:
        skipped = _replayed(state, event, ref, now_ms, window_ms)
        if skipped is not None:
            return skipped, state
    emit = _Emitter(event, ref)
    if isinstance(event, ReturnAuthorized):
        state = state or RmaState(rma_id=event.rma_id)
        if event.order_id is not None:
            state.order_id = event.order_id
        for auth in event.lines:
            known = state.lines.get(auth.line_id)
            if known is None:
                state.lines[auth.line_id] = RmaLine(sku=auth.sku, authorized=auth.qty)
            else:
                known.authorized = auth.qty
                if known.sku is None or known.received == 0:
                    known.sku = auth.sku
    elif isinstance(event, ReturnReceived):
        skus: list[str] = []
        for recv in event.lines:
            known = state.lines.get(recv.line_id) if state is not None else None
            sku = recv.sku or (known.sku if known is not None else None)
            if sku is None:
                if state is None:
                    return Rejected(
                        Reason.UNKNOWN_RMA,
                        f"RMA {event.rma_id!r} is unknown and line {recv.line_id!r} has no sku",
                    ), None
                return Rejected(
                    Reason.LINE_WITHOUT_SKU,
                    f"line {recv.line_id!r} of RMA {event.rma_id!r} was never authorized "
                    "and carries no sku",
                ), state
            skus.append(sku)
        state = state or RmaState(rma_id=event.rma_id)
        for recv, sku in zip(event.lines, skus, strict=True):
            line = state.lines.setdefault(recv.line_id, RmaLine(sku=sku))
            line.sku = sku
            line.received += recv.qty
            emit.quarantine(sku, event.node, recv.qty, 0)
    else:
        assert isinstance(event, ReturnInspected)
        if state is None:
            return Rejected(Reason.UNKNOWN_RMA, f"RMA {event.rma_id!r} is unknown"), None
        for insp in event.lines:
            known = state.lines.get(insp.line_id)
            if known is None or known.sku is None:
                return Rejected(
                    Reason.UNKNOWN_LINE, f"RMA {event.rma_id!r} has no line {insp.line_id!r}"
                ), state
        for insp in event.lines:
            line = state.lines[insp.line_id]
            assert line.sku is not None
            line.inspected += insp.qty
            emit.quarantine(line.sku, event.node, 0, insp.qty)
            if insp.disposition == "restock":
                emit.adjust(line.sku, event.node, insp.qty)
    _remember(state, event, ref, now_ms, window_ms)
    return Translated(emit.effects), state


def _remember(
    state: OrderState | RmaState, event: Event, ref: SourceRef, now_ms: int, window_ms: int
) -> None:
    prune_seen(state.seen, now_ms, window_ms)
    remember_key(state.seen, (event.source, event.event_id), now_ms)
    state.wm = (ref.partition, ref.offset, ref.index)
    state.src = ref.src
    state.updated_at = now_ms


def translate(
    event: Event,
    state: OrderState | RmaState | None,
    ref: SourceRef,
    now_ms: int,
    window_ms: int,
) -> tuple[Outcome, OrderState | RmaState | None]:
    """Translate any event; ``state`` is its order's or RMA's state (None for stock)."""
    kind = _PLACEMENT[type(event)][0]
    if kind == "stock":
        return translate_stock(event, ref), None  # type: ignore[arg-type]
    if kind == "orders":
        assert state is None or isinstance(state, OrderState)
        return translate_order(event, state, ref, now_ms, window_ms)  # type: ignore[arg-type]
    assert state is None or isinstance(state, RmaState)
    return translate_return(event, state, ref, now_ms, window_ms)  # type: ignore[arg-type]


# --- application --------------------------------------------------------------------------


def apply_effect(pos: Position, effect: Effect, now_ms: int, window_ms: int) -> bool:
    """Apply one effect to ``pos`` in place; False when it was a duplicate and was skipped."""
    ident = (effect.ofs, effect.idx, effect.seq)
    mark = pos.wm.get(effect.src)
    if mark is not None and ident <= mark:
        return False
    pos.wm[effect.src] = ident
    eid = effect.eid
    if eid is not None:
        seen = pos.seen
        seen_at = seen.get(eid)
        if seen_at is None:
            seen[eid] = now_ms  # a new key goes last, as remember_key keeps them
        elif now_ms - seen_at < window_ms:
            return False
        else:
            remember_key(seen, eid, now_ms)
    if isinstance(effect, Reserve):
        if effect.node is not None:
            _node(pos, effect.node).reserved += effect.qty
        else:
            assert effect.channel is not None
            left = pos.demand.get(effect.channel, 0) + effect.qty
            if left:
                pos.demand[effect.channel] = left
            else:
                pos.demand.pop(effect.channel, None)
        return True
    node = pos.nodes.get(effect.node)
    if node is None:
        node = pos.nodes[effect.node] = NodePosition()
    if isinstance(effect, Snapshot):
        as_of = node.as_of
        if as_of is None or effect.as_of > as_of or (
            effect.as_of == as_of and _wins_tie(effect.eid, node.snap_by)
        ):
            node.snap = effect.on_hand
            node.as_of = effect.as_of
            node.snap_by = effect.eid
            if node.changes:
                node.changes = [c for c in node.changes if c[0] > effect.as_of]
    elif isinstance(effect, Adjust):
        if node.as_of is None or effect.at > node.as_of:
            bisect.insort(node.changes, (effect.at, effect.delta))
    elif isinstance(effect, Policy):
        policy_at = node.policy_at
        if policy_at is None or effect.at > policy_at or (
            effect.at == policy_at and _wins_tie(effect.eid, node.policy_by)
        ):
            node.policy_at = effect.at
            node.safety = effect.safety_stock
            node.policy_by = effect.eid
    else:
        node.received += effect.received
        node.inspected += effect.inspected
    return True


def _wins_tie(challenger: EventKey | None, holder: EventKey | None) -> bool:
    """Whether a snapshot or policy at the same instant as the current one replaces it: the
    greater (``source``, ``event_id``) wins. A holder without a pair (stored before pairs
    were kept) stays."""
    return challenger is not None and holder is not None and challenger > holder


def _node(pos: Position, node: str) -> NodePosition:
    found = pos.nodes.get(node)
    if found is None:
        found = pos.nodes[node] = NodePosition()
    return found


def apply_effects(
    pos: Position, effects: Iterable[Effect], now_ms: int, window_ms: int
) -> tuple[int, int]:
    """Fold effects into ``pos`` in order; returns (applied, skipped) and bumps the version once."""
    applied = skipped = 0
    for effect in effects:
        if apply_effect(pos, effect, now_ms, window_ms):
            applied += 1
        else:
            skipped += 1
    if applied:
        pos.version += 1
        pos.updated_at = now_ms
        prune_seen(pos.seen, now_ms, window_ms)
    return applied, skipped


_position_encoder = msgspec.msgpack.Encoder()
_position_decoder = msgspec.msgpack.Decoder(Position)


def copy_position(pos: Position) -> Position:
    """A deep copy of a position."""
    return _position_decoder.decode(_position_encoder.encode(pos))


# --- projection ---------------------------------------------------------------------------


class NodeView(msgspec.Struct, frozen=True, gc=False):
    """The contract's quantities of one SKU at one node."""

    on_hand: int
    reserved: int
    quarantine: int
    safety_stock: int
    available: int


def node_view(pos: Position, node: str, topology: Topology) -> NodeView:
    """on_hand, reserved, quarantine, safety stock and available of ``pos`` at ``node``."""
    return NodeView(*node_figures(pos, node, topology))


def node_figures(pos: Position, node: str, topology: Topology) -> tuple[int, int, int, int, int]:
    """:func:`node_view`'s figures as a plain tuple, in its field order (the writer's hot path
    builds every SKU's served form from these, without a NodeView)."""
    state = pos.nodes.get(node)
    if state is None:
        return (0, 0, 0, topology.safety_defaults.get(node, 0), 0)
    on_hand = state.snap or 0
    if state.changes:
        for _, delta in state.changes:
            on_hand += delta
    safety = state.safety
    if safety is None:
        safety = topology.safety_defaults.get(node, 0)
    reserved = state.reserved
    quarantine = state.received - state.inspected
    available = on_hand - reserved - safety
    # Conditionals, not max(0, ...): this runs for every node of every SKU written.
    return (
        on_hand,
        reserved,
        quarantine if quarantine > 0 else 0,
        safety,
        available if available > 0 else 0,
    )


def is_oversold(view: NodeView) -> bool:
    """True when a node has promised more than it holds (on_hand below reserved)."""
    return view.on_hand < view.reserved


def oversold_at(state: NodePosition) -> bool:
    """:func:`is_oversold` of a node's view, straight from its position."""
    on_hand = state.snap or 0
    for _, delta in state.changes:
        on_hand += delta
    return on_hand < state.reserved


def channel_available(
    pos: Position,
    channel: ChannelSpec,
    topology: Topology,
    views: Mapping[str, NodeView] | None = None,
) -> int:
    """What ``channel`` may sell of this SKU (``views``: node views the caller already has)."""
    total = 0
    for node in channel.nodes:
        view = views.get(node) if views is not None else None
        if view is None:
            view = node_view(pos, node, topology)
        total += view.available
    return channel_share(pos, channel, total)


def channel_share(pos: Position, channel: ChannelSpec, nodes_available: int) -> int:
    """What ``channel`` may sell when its nodes have ``nodes_available`` in total."""
    share = nodes_available - channel.buffer
    if pos.demand:
        share -= pos.demand.get(channel.name, 0)
    return share if share > 0 else 0


def status_of(available: int, low_stock_threshold: int) -> Status:
    """The status band of an available quantity."""
    if available == 0:
        return "out_of_stock"
    if available <= low_stock_threshold:
        return "low_stock"
    return "in_stock"


def format_millis(ms: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-27T09:01:10.512Z``."""
    seconds, millis = divmod(ms, 1000)
    return f"{_format_second(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=64)
def _format_second(seconds: int) -> str:
    # Cached by the second, not the millisecond: hold expiries and positions written
    # in one second share it (each hold's expiry is its own millisecond).
    return f"{datetime.fromtimestamp(seconds, tz=UTC):%Y-%m-%dT%H:%M:%S}"


def _node_availability(node: str, view: NodeView) -> NodeAvailability:
    return NodeAvailability(
        node=node,
        available=view.available,
        on_hand=view.on_hand,
        reserved=view.reserved,
        quarantine=view.quarantine,
        safety_stock=view.safety_stock,
    )


def project(pos: Position, topology: Topology) -> SkuProjection:
    """What the API serves for this SKU: every configured channel, with node detail."""
    updated = format_millis(pos.updated_at)
    channels: list[ChannelAvailability] = []
    views: dict[str, NodeView] = {}
    details: dict[str, NodeAvailability] = {}
    for spec in topology.channels:
        nodes: list[NodeAvailability] = []
        for node in spec.nodes:
            detail = details.get(node)
            if detail is None:
                view = views[node] = node_view(pos, node, topology)
                detail = details[node] = _node_availability(node, view)
            nodes.append(detail)
        available = channel_available(pos, spec, topology, views)
        channels.append(
            ChannelAvailability(
                sku=pos.sku,
                channel=spec.name,
                available=available,
                status=status_of(available, spec.low_stock_threshold),
                version=pos.version,
                updated_at=updated,
                nodes=nodes,
            )
        )
    return SkuProjection(sku=pos.sku, version=pos.version, updated_at=updated, channels=channels)


#: Per event type: the kind of topic it must arrive on, and the field holding its key
#: (None for stock events, whose bulk messages may carry any key). A dict lookup on the
#: type is the translators' dispatch: isinstance against a union is slow on the hot path.
_PLACEMENT: dict[type, tuple[str, str | None]] = {
    StockSnapshot: ("stock", None),
    StockAdjusted: ("stock", None),
    StockPolicy: ("stock", None),
    OrderCreated: ("orders", "order_id"),
    OrderAllocated: ("orders", "order_id"),
    OrderCancelled: ("orders", "order_id"),
    OrderShipped: ("orders", "order_id"),
    ReturnAuthorized: ("returns", "rma_id"),
    ReturnReceived: ("returns", "rma_id"),
    ReturnInspected: ("returns", "rma_id"),
}


def key_of(event: Event) -> str | None:
    """The Kafka key an event belongs under: order_id, rma_id, or None for stock events."""
    field = _PLACEMENT[type(event)][1]
    return None if field is None else cast(str, getattr(event, field))


def check_placement(event: Event, kind: str, key: str | None, bulk: bool) -> Rejected | None:
    """Reject an event on the wrong topic, or an order/return event of a bulk message under
    another key."""
    expected, field = _PLACEMENT[type(event)]
    if expected == kind and (field is None or not bulk):
        return None
    family = type(event).__struct_config__.tag
    if expected != kind:
        return Rejected(
            Reason.WRONG_TOPIC,
            f"{family} events belong on the {expected} topic, not the {kind} topic",
        )
    own = key_of(event)
    if own != key:
        return Rejected(
            Reason.KEY_MISMATCH,
            f"{family} for {own!r} in a bulk message under key {key!r}; every event of a "
            "bulk message on this topic must belong to the message's key",
        )
    return None


def topology_of(settings: Settings) -> Topology:
    """The core's view of the configured channels and node defaults."""
    return Topology(
        channels=tuple(
            ChannelSpec(
                name=c.name,
                nodes=tuple(c.nodes),
                buffer=c.buffer,
                low_stock_threshold=c.low_stock_threshold,
            )
            for c in settings.channels
        ),
        safety_defaults={name: node.safety_stock for name, node in settings.nodes.items()},
    )
