"""The core wired the way the worker wires it, in memory, for tests.

Each event becomes one source record on its topic family's partition (a fixed
hash of its key), is translated with its order's or RMA's state, and its
effects are folded into per-SKU positions; the model is then read through
:func:`~stocksync.readmodel.core.node_view` and
:func:`~stocksync.readmodel.core.project`, in the shape of the oracle's
:class:`~tests.readmodel.oracle.Model` so the two compare with ``==``.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import msgspec

from stocksync.codecs.effects import Effect
from stocksync.codecs.events import Event
from stocksync.codecs.state import OrderState, Position, RmaState, state_encoder
from stocksync.readmodel.core import (
    Rejected,
    Skipped,
    SourceRef,
    Topology,
    apply_effects,
    channel_available,
    copy_position,
    node_view,
    project,
    translate,
)
from tests.readmodel.oracle import (
    APPLIED,
    DUPLICATE,
    ChannelFigures,
    Model,
    NodeFigures,
    key_group,
)

__all__ = [
    "NOW_MS",
    "PARTITIONS",
    "WINDOW_MS",
    "MemoryWorker",
    "build_model",
    "copy_state",
    "pack",
]

#: Source partitions per topic in these tests.
PARTITIONS = 3
#: The wall clock the translators and the applier see (ms), fixed so nothing expires.
NOW_MS = int(datetime(2026, 11, 27, 12, 0, tzinfo=UTC).timestamp() * 1000)
#: The de-duplication window: the contract's minimum, 24 hours.
WINDOW_MS = 24 * 3600 * 1000

State = OrderState | RmaState
_KIND = {"stock": "stock", "order": "orders", "return": "returns"}
_order_decoder = msgspec.msgpack.Decoder(OrderState)
_rma_decoder = msgspec.msgpack.Decoder(RmaState)


def copy_state(state: State) -> State:
    """A deep copy of an order's or RMA's state, through its stored encoding."""
    decoder = _order_decoder if isinstance(state, OrderState) else _rma_decoder
    return decoder.decode(state_encoder.encode(state))


class MemoryWorker:
    """Translators and an applier sharing one process: the worker without Kafka and Redis."""

    def __init__(
        self, topology: Topology, *, now_ms: int = NOW_MS, window_ms: int = WINDOW_MS
    ) -> None:
        self.topology = topology
        self.now_ms = now_ms
        self.window_ms = window_ms
        #: (family, key) -> the translator's state of that order or RMA.
        self.states: dict[tuple[str, str], State] = {}
        #: sku -> the applier's position.
        self.positions: dict[str, Position] = {}
        self._next_offset: dict[tuple[str, int], int] = {}
        #: Every effect sent to the applier, in order (the effects topic).
        self.sent: list[Effect] = []

    def record(self, event: Event) -> SourceRef:
        """Where the next record of ``event``'s key lands: its partition and a new offset."""
        family, key = key_group(event)
        kind = _KIND[family]
        partition = zlib.crc32(key.encode()) % PARTITIONS
        offset = self._next_offset.get((kind, partition), 0)
        self._next_offset[(kind, partition)] = offset + 1
        return SourceRef(
            kind=kind, partition=partition, offset=offset, topic=f"stocksync.{kind}.v1"
        )

    def deliver(self, event: Event, ref: SourceRef | None = None) -> str:
        """Translate and apply one event read at ``ref`` (a new record when None); its verdict."""
        if ref is None:
            ref = self.record(event)
        group = key_group(event)
        outcome, state = translate(
            event, self.states.get(group), ref, self.now_ms, self.window_ms
        )
        if state is not None:
            self.states[group] = state
        if isinstance(outcome, Rejected):
            return outcome.reason
        if isinstance(outcome, Skipped):
            return DUPLICATE
        self.sent.extend(outcome.effects)
        applied, skipped = self.apply(outcome.effects)
        if skipped and not applied:
            return DUPLICATE
        return "partly applied" if skipped else APPLIED

    def deliver_message(self, events: Sequence[Event]) -> list[tuple[SourceRef, str]]:
        """One source record carrying ``events`` (a bulk array when more than one), under the
        first event's key; each event's ref and verdict."""
        record = self.record(events[0])
        delivered = []
        for index, event in enumerate(events):
            ref = msgspec.structs.replace(record, index=index) if len(events) > 1 else record
            delivered.append((ref, self.deliver(event, ref)))
        return delivered

    def apply(self, effects: Iterable[Effect]) -> tuple[int, int]:
        """Fold effects into their SKUs' positions, one batch per SKU; (applied, skipped)."""
        by_sku: dict[str, list[Effect]] = {}
        for effect in effects:
            by_sku.setdefault(effect.sku, []).append(effect)
        applied = skipped = 0
        for sku, batch in by_sku.items():
            position = self.positions.setdefault(sku, Position(sku=sku))
            done, dropped = apply_effects(position, batch, self.now_ms, self.window_ms)
            applied += done
            skipped += dropped
        return applied, skipped

    def checkpoint(self) -> tuple[dict[tuple[str, str], State], dict[str, Position]]:
        """Deep copies of the translators' states and the applier's positions."""
        return (
            {group: copy_state(state) for group, state in self.states.items()},
            {sku: copy_position(pos) for sku, pos in self.positions.items()},
        )

    def model(self, skus: Sequence[str], nodes: Sequence[str], verdicts: list[str]) -> Model:
        """The read model over ``skus`` x ``nodes`` and every configured channel."""
        figures: dict[tuple[str, str], NodeFigures] = {}
        channels: dict[tuple[str, str], ChannelFigures] = {}
        wanted = set(nodes) | {n for spec in self.topology.channels for n in spec.nodes}
        for sku in skus:
            position = self.positions.get(sku) or Position(sku=sku)
            for node in sorted(wanted | set(position.nodes)):
                view = node_view(position, node, self.topology)
                figures[(sku, node)] = NodeFigures(
                    on_hand=view.on_hand,
                    reserved=view.reserved,
                    quarantine=view.quarantine,
                    safety_stock=view.safety_stock,
                    available=view.available,
                )
            specs = {spec.name: spec for spec in self.topology.channels}
            for served in project(position, self.topology).channels:
                channels[(sku, served.channel)] = ChannelFigures(served.available, served.status)
                assert served.available == channel_available(
                    position, specs[served.channel], self.topology
                )
                for detail in served.nodes or []:
                    shown = NodeFigures(
                        on_hand=detail.on_hand,
                        reserved=detail.reserved,
                        quarantine=detail.quarantine,
                        safety_stock=detail.safety_stock,
                        available=detail.available,
                    )
                    assert shown == figures[(sku, detail.node)], (sku, detail.node)
        return Model(verdicts=verdicts, nodes=figures, channels=channels)


def _may_share_a_message(first: Event, other: Event) -> bool:
    family, key = key_group(first)
    other_family, other_key = key_group(other)
    return family == other_family and (family == "stock" or key == other_key)


def pack(events: Sequence[Event], sizes: Sequence[int] = ()) -> list[list[Event]]:
    """Cut ``events`` into source messages, in order: runs of up to ``sizes[i]`` events that
    may share a bulk message (stock events of any SKUs, or events of one order or RMA)."""
    limits = itertools.cycle(sizes or (1,))
    messages: list[list[Event]] = []
    limit = next(limits)
    for event in events:
        if messages and len(messages[-1]) < limit and _may_share_a_message(messages[-1][0], event):
            messages[-1].append(event)
        else:
            if messages:
                limit = next(limits)
            messages.append([event])
    return messages


def build_model(
    events_in_order: Sequence[Event],
    topology: Topology,
    skus: Sequence[str],
    nodes: Sequence[str],
    *,
    sizes: Sequence[int] = (),
) -> Model:
    """Deliver every event once, in this order, in messages cut by :func:`pack`, and read the
    resulting model."""
    worker = MemoryWorker(topology)
    verdicts = [
        verdict
        for message in pack(events_in_order, sizes)
        for _, verdict in worker.deliver_message(message)
    ]
    return worker.model(skus, nodes, verdicts)
