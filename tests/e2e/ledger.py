"""What was sent and what it must give: the reference ledger, and its diff with Redis.

:class:`Ledger` remembers every message sent and where it landed (partition,
offset). From it come the reference model - ``tests.readmodel.oracle``, fed
the schema-valid events in the order each key received them - and the dead
letters the contract asks for; :func:`diff_models` says how what the workers
wrote (:class:`Observed`) differs from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from stocksync.codecs.events import Event
from stocksync.codecs.messages import Reason
from stocksync.readmodel.core import Topology
from tests.e2e.events import Item, Msg
from tests.readmodel.oracle import (
    APPLIED,
    DUPLICATE,
    ChannelFigures,
    Model,
    NodeFigures,
    expected_model,
)

__all__ = [
    "DeadLetterSeen",
    "DeadLetterSpot",
    "ExpectedDead",
    "Landed",
    "Ledger",
    "Observed",
    "Reference",
    "diff_models",
]

# --- what was sent, and what it must give -------------------------------------------------


@dataclass(frozen=True)
class Landed:
    """A message and where the broker put it."""

    msg: Msg
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, order=True)
class DeadLetterSpot:
    """What identifies a dead letter: why, and where its event was read."""

    reason: str
    topic: str
    partition: int
    offset: int
    index: int | None


@dataclass(frozen=True)
class ExpectedDead:
    """A dead letter the contract asks for, with the event bytes it must carry."""

    spot: DeadLetterSpot
    key: str | None
    raw: bytes
    correlation_id: str | None


@dataclass
class Reference:
    """The contract's model of everything sent, and the dead letters it implies."""

    model: Model
    dead: list[ExpectedDead]
    events: int


_event_decoder = msgspec.json.Decoder(Event)


class Ledger:
    """Every message sent, in send order, with where it landed."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.landed: list[Landed] = []

    def extend(self, landed: Iterable[Landed]) -> None:
        """Record messages in the order they were sent."""
        self.landed.extend(landed)

    @property
    def events(self) -> int:
        """How many events (items) were sent, sentinels included."""
        return sum(len(entry.msg.items) for entry in self.landed)

    def reference(self) -> Reference:
        """Feed the schema-valid events to the oracle; collect every expected dead letter."""
        events: list[Event] = []
        judged: list[ExpectedDead] = []
        dead: list[ExpectedDead] = []
        nodes = sorted({n for spec in self.topology.channels for n in spec.nodes})
        for entry in self.landed:
            for position, item in enumerate(entry.msg.items):
                letter = _letter_of(entry, position, item)
                if item.reason is not None:
                    dead.append(letter)
                    continue
                events.append(_event_decoder.decode(item.raw))
                judged.append(letter)
        model = expected_model(events, self.topology, [], nodes)
        for verdict, letter in zip(model.verdicts, judged, strict=True):
            if verdict not in (APPLIED, DUPLICATE):
                spot = letter.spot
                dead.append(ExpectedDead(
                    DeadLetterSpot(verdict, spot.topic, spot.partition, spot.offset, spot.index),
                    letter.key, letter.raw, letter.correlation_id,
                ))
        return Reference(model=model, dead=dead, events=self.events)


def _letter_of(entry: Landed, position: int, item: Item) -> ExpectedDead:
    """The dead letter ``item`` would give (its reason, or none yet when the oracle judges)."""
    msg = entry.msg
    index = position if msg.is_bulk else None
    cid: str | None = None
    if item.reason is None or item.reason == Reason.KEY_MISMATCH:
        cid = json.loads(item.raw).get("correlation_id")
    header = dict(msg.headers).get("correlation_id")
    if cid is None and header is not None:
        cid = header.decode()
    spot = DeadLetterSpot(item.reason or "", entry.topic, entry.partition, entry.offset, index)
    return ExpectedDead(spot, msg.key, item.raw, cid)


# --- what the workers wrote ---------------------------------------------------------------


@dataclass
class Observed:
    """The read model as Redis holds it, in the oracle's shapes."""

    nodes: dict[tuple[str, str], NodeFigures] = field(default_factory=dict)
    channels: dict[tuple[str, str], ChannelFigures] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    #: Inconsistencies inside one SKU's hash (version fields, a node shown twice differently).
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeadLetterSeen:
    """One record read back from the dead-letter topic."""

    record: dict[str, Any]
    key: bytes | None
    headers: dict[str, bytes]

    @property
    def spot(self) -> DeadLetterSpot:
        """Why and where, from the record's value."""
        r = self.record
        return DeadLetterSpot(r["reason"], r["topic"], r["partition"], r["offset"],
                              r.get("index"))


def diff_models(expected: Model, observed: Observed, limit: int = 25) -> list[str]:
    """Every difference between the reference and Redis, as readable lines (at most ``limit``)."""
    lines = list(observed.problems)
    want_skus = {sku for sku, _ in expected.channels}
    have_skus = set(observed.versions)
    for sku in sorted(want_skus - have_skus):
        lines.append(f"{sku}: missing from Redis")
    for sku in sorted(have_skus - want_skus):
        lines.append(f"{sku}: in Redis but the reference has no such SKU")
    for key in sorted(expected.channels.keys() & observed.channels.keys()):
        if expected.channels[key] != observed.channels[key]:
            lines.append(f"channel {key}: want {expected.channels[key]}, "
                         f"got {observed.channels[key]}")
    for key in sorted(observed.nodes):
        want = expected.nodes.get(key)
        if want != observed.nodes[key]:
            lines.append(f"node {key}: want {want}, got {observed.nodes[key]}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more differences"]
    return lines
