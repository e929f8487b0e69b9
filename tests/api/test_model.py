"""The in-memory model: what it keeps per SKU, versions, detail, generations."""

from __future__ import annotations

import msgspec
import pytest

from stocksync.api.model import AvailabilityModel, is_identifier, parse_stream_id
from stocksync.codecs.projections import SkuProjection
from tests.api.helpers import projection, served

_enc = msgspec.json.Encoder()


def test_answers_are_the_encoded_structs() -> None:
    model = AvailabilityModel(["web", "store"])
    proj = projection("SKU-1", 3)
    assert model.apply(served(proj))
    for channel in proj.channels:
        plain = model.document("SKU-1", channel.channel)
        assert plain == _enc.encode(msgspec.structs.replace(channel, nodes=msgspec.UNSET))
        assert model.document("SKU-1", channel.channel, detail=True) == _enc.encode(channel)
    assert model.document("SKU-1", "pos") is None
    assert model.document("OTHER", "web") is None
    assert model.version("SKU-1") == 3


def test_versions_never_go_backwards_unless_replacing() -> None:
    model = AvailabilityModel(["web"])
    assert model.apply(served(projection("A", 5, channels=["web"])))
    assert not model.apply(served(projection("A", 5, available=1, channels=["web"])))
    assert not model.apply(served(projection("A", 4, channels=["web"])))
    assert model.version("A") == 5
    assert model.apply(served(projection("A", 2, channels=["web"])), replace=True)
    assert model.version("A") == 2


def test_unconfigured_and_missing_channels() -> None:
    model = AvailabilityModel(["web", "store"])
    model.apply(served(projection("A", 1, channels=["web", "marketplace"])))
    assert model.document("A", "web") is not None
    assert model.document("A", "store") is None
    assert model.document("A", "store", detail=True) is None


def test_a_projection_without_node_detail() -> None:
    model = AvailabilityModel(["web"])
    proj = projection("A", 1, channels=["web"])
    bare = SkuProjection(
        sku="A",
        version=1,
        updated_at=proj.updated_at,
        channels=[msgspec.structs.replace(proj.channels[0], nodes=msgspec.UNSET)],
    )
    model.apply(served(bare))
    assert msgspec.json.decode(model.document("A", "web", detail=True) or b"")["nodes"] == []


def test_invalid_skus_are_refused_and_retain_forgets() -> None:
    model = AvailabilityModel(["web"])
    with pytest.raises(ValueError):
        model.apply(served(projection("bad sku", 1, channels=["web"])))
    model.apply(served(projection("A", 1, channels=["web"])))
    model.apply(served(projection("B", 1, channels=["web"])))
    assert model.retain({"A"}) == 1
    assert len(model) == 1


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("A", True),
        ("a.b:c/d-e_f", True),
        ("a b", False),
        ("x" * 64, True),
        ("x" * 65, False),
        ("A\n", False),
    ],
)
def test_identifiers(text: str, valid: bool) -> None:
    assert is_identifier(text) is valid


def test_stream_ids_order_like_redis() -> None:
    assert parse_stream_id(b"1700000000000-3") == (1700000000000, 3)
    assert parse_stream_id("5-10") > parse_stream_id("5-9")
    assert parse_stream_id("10-0") > parse_stream_id("9-99")
