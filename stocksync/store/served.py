"""The served form of a SKU (the ``srv`` field and change entries): built once, by the writer.

The applier turns a position into :class:`~stocksync.codecs.projections.Served`
with the core's own figures (:func:`~stocksync.readmodel.core.node_figures`,
:func:`~stocksync.readmodel.core.channel_share`,
:func:`~stocksync.readmodel.core.status_of`); an API replica keeps its parts
as they are: each channel's answer without detail, and the packed node detail,
which it encodes as JSON only for ``detail=nodes``. The pre-hold ``available``
of each channel is kept as a number, for holds to subtract from at serve time
(and readable in Lua with ``cmsgpack.unpack``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec

from stocksync.codecs.projections import (
    ChannelAvailability,
    NodeAvailability,
    Served,
    ServedChannel,
)
from stocksync.codecs.state import Position
from stocksync.readmodel import core

__all__ = [
    "PackedNode",
    "decode_detail",
    "decode_served",
    "detail_nodes",
    "encode_detail",
    "served_bytes",
    "served_from_channels",
]

#: One node as packed in :attr:`Served.detail`.
PackedNode = tuple[str, int, int, int, int, int]

_msgpack: Final = msgspec.msgpack.Encoder()
_json: Final = msgspec.json.Encoder()
_served_decoder: Final = msgspec.msgpack.Decoder(Served)


class _PackedNode(msgspec.Struct, array_like=True, frozen=True, gc=False):
    node: str
    available: int
    on_hand: int
    reserved: int
    quarantine: int
    safety_stock: int


_detail_decoder: Final = msgspec.msgpack.Decoder(list[list[_PackedNode]])


def served_bytes(pos: Position, topology: core.Topology) -> bytes:
    """The ``srv`` field of ``pos``: every configured channel, ready to serve."""
    updated = core.format_millis(pos.updated_at)
    sku, version = pos.sku, pos.version
    packed: dict[str, PackedNode] = {}
    channels: list[ServedChannel] = []
    detail: list[list[PackedNode]] = []
    for spec in topology.channels:
        nodes: list[PackedNode] = []
        total = 0
        for node in spec.nodes:
            one = packed.get(node)
            if one is None:
                on_hand, reserved, quarantine, safety, free = core.node_figures(pos, node, topology)
                one = packed[node] = (node, free, on_hand, reserved, quarantine, safety)
            nodes.append(one)
            total += one[1]
        available = core.channel_share(pos, spec, total)
        document = _json.encode(
            ChannelAvailability(
                sku=sku,
                channel=spec.name,
                available=available,
                status=core.status_of(available, spec.low_stock_threshold),
                version=version,
                updated_at=updated,
                held=0,  # what holds keep is subtracted by each API replica
            )
        )
        channels.append(ServedChannel(spec.name, available, document))
        detail.append(nodes)
    return _msgpack.encode(Served(sku, version, channels, _msgpack.encode(detail)))


def served_from_channels(
    sku: str, version: int, channels: Sequence[ChannelAvailability]
) -> bytes:
    """The ``srv`` field of ready channel answers (with ``nodes``): for seeding and tests."""
    parts: list[ServedChannel] = []
    detail: list[list[PackedNode]] = []
    for channel in channels:
        nodes = channel.nodes if isinstance(channel.nodes, list) else []
        held = 0 if channel.held is msgspec.UNSET else channel.held
        plain = msgspec.structs.replace(channel, held=held, nodes=msgspec.UNSET)
        parts.append(ServedChannel(channel.channel, channel.available, _json.encode(plain)))
        detail.append([
            (n.node, n.available, n.on_hand, n.reserved, n.quarantine, n.safety_stock)
            for n in nodes
        ])
    return _msgpack.encode(Served(sku, version, parts, _msgpack.encode(detail)))


def decode_served(raw: bytes) -> Served:
    """A ``srv`` field back into :class:`Served`; raises msgspec.DecodeError when malformed."""
    return _served_decoder.decode(raw)


def encode_detail(detail: Sequence[Sequence[PackedNode]]) -> bytes:
    """Pack per-channel node lists as :attr:`Served.detail` holds them."""
    return _msgpack.encode(detail)


def decode_detail(detail: bytes) -> list[list[PackedNode]]:
    """:attr:`Served.detail` as plain tuples, one list per channel."""
    return [
        [(n.node, n.available, n.on_hand, n.reserved, n.quarantine, n.safety_stock) for n in ch]
        for ch in _detail_decoder.decode(detail)
    ]


def detail_nodes(detail: bytes, index: int) -> list[NodeAvailability]:
    """The nodes of channel number ``index`` of a packed detail."""
    return [
        NodeAvailability(
            node=p.node,
            available=p.available,
            on_hand=p.on_hand,
            reserved=p.reserved,
            quarantine=p.quarantine,
            safety_stock=p.safety_stock,
        )
        for p in _detail_decoder.decode(detail)[index]
    ]
