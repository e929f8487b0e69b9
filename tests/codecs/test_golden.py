"""Golden bytes of the forms that wait in a topic or in Redis across an upgrade.

Effects (array-like msgpack on the effects topic) and stored state (msgpack in
Redis) are read by a newer worker than the one that wrote them. Each form is
pinned here: fixed instances encode to the committed hex, and the committed hex
decodes to them. The previous form's committed bytes (form 1, written by the
worker before full-precision times and pair keys) must still decode, converted,
to the same meaning. A change that fails these tests changes a wire form: append
fields at the end with defaults instead, or add a form and read the old one
(:mod:`stocksync.codecs.forms`), then update the hex deliberately.
"""

from __future__ import annotations

import msgspec
import pytest

from stocksync.codecs.effects import (
    Adjust,
    EffectBatch,
    Policy,
    Quarantine,
    Reserve,
    Snapshot,
    batch_decoder,
    batch_encoder,
)
from stocksync.codecs.state import (
    NodePosition,
    OrderLine,
    OrderState,
    Position,
    RmaLine,
    RmaState,
    order_decoder,
    position_decoder,
    rma_decoder,
    state_encoder,
)

#: 2026-11-27T09:00:00Z, 1795770000 seconds after the epoch.
NINE = 1_795_770_000
SEEN = 1_795_770_001_000


def current_batch() -> EffectBatch:
    """One effect of every kind, every field set to something."""
    stock = {"sku": "SKU-1", "src": "stocksync.stock.v1/3", "ofs": 41, "idx": 2, "seq": 0}
    orders = {"sku": "SKU-1", "src": "stocksync.orders.v1/0", "ofs": 9, "idx": 0}
    return EffectBatch([
        Snapshot(**stock, eid=("erp", "exp-7"), at=(NINE, 123_456_789), produced=1795770000500,
                 cid="c-1", node="dc-east", on_hand=120, as_of=(NINE - 1, 1_001)),
        Adjust(**orders, seq=1, eid=None, at=(NINE, 0), produced=0, cid=None, node="dc-east",
               delta=-2),
        Reserve(**orders, seq=0, eid=None, at=(NINE, 0), produced=0, cid="ord-1", node=None,
                channel="web", qty=3, hold="h-7"),
        Policy(**stock, eid=("erp\x1f", "pol-1"), at=(NINE, 1_000), produced=0, cid=None,
               node="dc-west", safety_stock=4),
        Quarantine(sku="SKU-1", src="stocksync.returns.v1/1", ofs=5, idx=0, seq=0, eid=None,
                   at=(NINE, 0), produced=0, cid=None, node="dc-east", received=2, inspected=0),
    ])


def current_position() -> Position:
    """A position with every field of a node set."""
    node = NodePosition(
        snap=120, as_of=(NINE - 1, 1_000), changes=[((NINE, 300), -2)], reserved=3, received=2,
        inspected=1, policy_at=(NINE, 1_000), safety=4, snap_by=("erp", "exp-7"),
        policy_by=("erp", "pol-1"),
    )
    return Position(
        sku="SKU-1", version=7, updated_at=SEEN, nodes={"dc-east": node}, demand={"web": 3},
        wm={"stocksync.stock.v1/3": (41, 2, 0)}, seen={("erp", "exp-7"): SEEN},
    )


def current_order() -> OrderState:
    """An order with one line and one remembered event."""
    return OrderState(
        order_id="ord-1", channel="web", lines={"1": OrderLine(sku="SKU-1", open=3, node=None)},
        wm=(0, 9, 0), src="stocksync.orders.v1/0", seen={("shop", "c-1"): SEEN}, updated_at=SEEN,
    )


def current_rma() -> RmaState:
    """An RMA with one line and one remembered event."""
    return RmaState(
        rma_id="rma-1", order_id="ord-1",
        lines={"1": RmaLine(sku="SKU-1", authorized=1, received=2, inspected=0)},
        wm=(1, 5, 0), src="stocksync.returns.v1/1", seen={("returns", "r-1"): SEEN},
        updated_at=SEEN,
    )


# --- form 2 (current) ------------------------------------------------------------------------

EFFECTS = "91959da4736e6170a5534b552d31b473746f636b73796e632e73746f636b2e76312f3329020092a3657270a56578702d3792ce6b094690ce075bcd15cf000001a21c3ba474a3632d31a764632d656173747892ce6b09468fcd03e99ca470687973a5534b552d31b573746f636b73796e632e6f72646572732e76312f30090001c092ce6b0946900000c0a764632d65617374fe9ea472657376a5534b552d31b573746f636b73796e632e6f72646572732e76312f30090000c092ce6b0946900000a56f72642d31c0a377656203a3682d379ca3706f6ca5534b552d31b473746f636b73796e632e73746f636b2e76312f3329020092a46572701fa5706f6c2d3192ce6b094690cd03e800c0a764632d77657374049da471756172a5534b552d31b673746f636b73796e632e72657475726e732e76312f31050000c092ce6b0946900000c0a764632d656173740200"  # noqa: E501
POSITION = "87a3736b75a5534b552d31a776657273696f6e07aa757064617465645f6174cf000001a21c3ba668a56e6f64657381a764632d656173749a7892ce6b09468fcd03e8919292ce6b094690cd012cfe03020192ce6b094690cd03e80492a3657270a56578702d3792a3657270a5706f6c2d31a664656d616e6481a377656203a2776d81b473746f636b73796e632e73746f636b2e76312f3393290200a47365656e8192a3657270a56578702d37cf000001a21c3ba668"  # noqa: E501
ORDER = "87a86f726465725f6964a56f72642d31a76368616e6e656ca3776562a56c696e657381a13193a5534b552d3103c0a2776d93000900a3737263b573746f636b73796e632e6f72646572732e76312f30a47365656e8192a473686f70a3632d31cf000001a21c3ba668aa757064617465645f6174cf000001a21c3ba668"  # noqa: E501
RMA = "87a6726d615f6964a5726d612d31a86f726465725f6964a56f72642d31a56c696e657381a13194a5534b552d31010200a2776d93010500a3737263b673746f636b73796e632e72657475726e732e76312f31a47365656e8192a772657475726e73a3722d31cf000001a21c3ba668aa757064617465645f6174cf000001a21c3ba668"  # noqa: E501

#: Form 2 before ``Reserve.hold`` was appended: still read, with ``hold`` None.
EFFECTS_BEFORE_HOLD = "91959da4736e6170a5534b552d31b473746f636b73796e632e73746f636b2e76312f3329020092a3657270a56578702d3792ce6b094690ce075bcd15cf000001a21c3ba474a3632d31a764632d656173747892ce6b09468fcd03e99ca470687973a5534b552d31b573746f636b73796e632e6f72646572732e76312f30090001c092ce6b0946900000c0a764632d65617374fe9da472657376a5534b552d31b573746f636b73796e632e6f72646572732e76312f30090000c092ce6b0946900000a56f72642d31c0a3776562039ca3706f6ca5534b552d31b473746f636b73796e632e73746f636b2e76312f3329020092a46572701fa5706f6c2d3192ce6b094690cd03e800c0a764632d77657374049da471756172a5534b552d31b673746f636b73796e632e72657475726e732e76312f31050000c092ce6b0946900000c0a764632d656173740200"  # noqa: E501

# --- form 1, as the worker before it wrote them ----------------------------------------------

EFFECTS1 = "91959da4736e6170a5534b552d31b473746f636b73796e632e73746f636b2e76312f33290200a96572701f6578702d37cf0006613e48f4a640cf000001a21c3ba474a3632d31a764632d6561737478cf0006613e48e381c19ca470687973a5534b552d31b573746f636b73796e632e6f72646572732e76312f30090001c0cf0006613e48f2c40000c0a764632d65617374fe9da472657376a5534b552d31b573746f636b73796e632e6f72646572732e76312f30090000c0cf0006613e48f2c40000a56f72642d31c0a3776562039ca3706f6ca5534b552d31b473746f636b73796e632e73746f636b2e76312f33290200a96572701f706f6c2d31cf0006613e48f2c40100c0a764632d77657374049da471756172a5534b552d31b673746f636b73796e632e72657475726e732e76312f31050000c0cf0006613e48f2c40000c0a764632d656173740200"  # noqa: E501
POSITION1 = "87a3736b75a5534b552d31a776657273696f6e07aa757064617465645f6174cf000001a21c3ba668a56e6f64657381a764632d656173749878cf0006613e48e381c19192cf0006613e48f2c400fe030201cf0006613e48f2c40104a664656d616e6481a377656203a2776d81b473746f636b73796e632e73746f636b2e76312f3393290200a47365656e81a96572701f6578702d37cf000001a21c3ba668"  # noqa: E501
ORDER1 = "87a86f726465725f6964a56f72642d31a76368616e6e656ca3776562a56c696e657381a13193a5534b552d3103c0a2776d93000900a3737263b573746f636b73796e632e6f72646572732e76312f30a47365656e81a873686f701f632d31cf000001a21c3ba668aa757064617465645f6174cf000001a21c3ba668"  # noqa: E501
RMA1 = "87a6726d615f6964a5726d612d31a86f726465725f6964a56f72642d31a56c696e657381a13194a5534b552d31010200a2776d93010500a3737263b673746f636b73796e632e72657475726e732e76312f31a47365656e81ab72657475726e731f722d31cf000001a21c3ba668aa757064617465645f6174cf000001a21c3ba668"  # noqa: E501


@pytest.mark.parametrize(
    ("build", "encoded", "decoder"),
    [
        (current_batch, EFFECTS, batch_decoder),
        (current_position, POSITION, position_decoder),
        (current_order, ORDER, order_decoder),
        (current_rma, RMA, rma_decoder),
    ],
    ids=["effects", "position", "order", "rma"],
)
def test_current_forms_encode_to_and_decode_from_the_committed_bytes(
    build: object, encoded: str, decoder: object
) -> None:
    value = build()  # type: ignore[operator]
    encoder = batch_encoder if isinstance(value, EffectBatch) else state_encoder
    assert encoder.encode(value).hex() == encoded
    assert decoder.decode(bytes.fromhex(encoded)) == value  # type: ignore[attr-defined]


def test_a_field_appended_with_a_default_reads_the_bytes_from_before_it() -> None:
    before = current_batch()
    reserve = before.effects[2]
    assert isinstance(reserve, Reserve)
    before.effects[2] = msgspec.structs.replace(reserve, hold=None)
    assert batch_decoder.decode(bytes.fromhex(EFFECTS_BEFORE_HOLD)) == before


def test_form_1_effects_still_in_the_topic_are_read_as_they_meant() -> None:
    old = bytes.fromhex(EFFECTS1)
    with pytest.raises(msgspec.ValidationError):  # never misread as the current form
        msgspec.msgpack.decode(old, type=EffectBatch)
    snap, adjust, reserve, pol, quarantine = batch_decoder.decode(old).effects
    assert snap == Snapshot(
        sku="SKU-1", src="stocksync.stock.v1/3", ofs=41, idx=2, seq=0, eid=("erp", "exp-7"),
        at=(NINE, 123_456_000), produced=1795770000500, cid="c-1", node="dc-east", on_hand=120,
        as_of=(NINE - 1, 1_000),
    )
    assert (adjust.at, adjust.eid, adjust.delta) == ((NINE, 0), None, -2)  # type: ignore[union-attr]
    assert (reserve.channel, reserve.qty, reserve.cid) == ("web", 3, "ord-1")  # type: ignore[union-attr]
    assert (pol.eid, pol.at) == (("erp", "pol-1"), (NINE, 1_000))
    assert isinstance(quarantine, Quarantine) and quarantine.received == 2


def test_form_1_positions_in_redis_are_read_as_they_meant() -> None:
    old = bytes.fromhex(POSITION1)
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(old, type=Position)
    expected = current_position()
    node = expected.nodes["dc-east"]
    node.snap_by = node.policy_by = None  # form 1 did not keep them
    node.changes = [((NINE, 0), -2)]      # nor more than microseconds
    assert position_decoder.decode(old) == expected


@pytest.mark.parametrize(("encoded", "decoder", "build"),
                         [(ORDER1, order_decoder, current_order), (RMA1, rma_decoder, current_rma)],
                         ids=["order", "rma"])
def test_form_1_order_and_rma_states_are_read_as_they_meant(
    encoded: str, decoder: object, build: object
) -> None:
    assert decoder.decode(bytes.fromhex(encoded)) == build()  # type: ignore[attr-defined,operator]


def test_effects_only_grow_at_the_end() -> None:
    # Built by keyword; the base's fields come first in every effect's array, then its own.
    for kind in (Snapshot, Adjust, Reserve, Policy, Quarantine):
        fields = kind.__struct_fields__
        assert fields[:9] == ("sku", "src", "ofs", "idx", "seq", "eid", "at", "produced", "cid")
        with pytest.raises(TypeError):
            kind("SKU-1", "src/0", 0, 0, 0, None, (0, 0), 0, None)  # type: ignore[misc]
    assert NodePosition.__struct_fields__[-2:] == ("snap_by", "policy_by")
