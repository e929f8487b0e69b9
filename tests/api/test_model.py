"""The in-memory model: what it keeps per SKU, versions, detail, generations."""

from __future__ import annotations

import time

import msgspec
import pytest

from stocksync.api.model import AvailabilityModel, is_identifier, now_ms, parse_stream_id
from stocksync.codecs.holds import HeldDelta, HeldLine, HeldSnapshot
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


def test_held_skus_are_served_less_their_holds_and_wake_up_once_per_expiry() -> None:
    model = AvailabilityModel(["web", "store"], [5, 5])
    assert model.apply(served(projection("SKU-1", 3, available=10)))
    soon, later = now_ms() + 300, now_ms() + 120_000
    for version in range(1, 101):  # a hot SKU: a hundred changes of its holds
        # (One line per hold id, as in Redis: h1 and another hold each time.)
        lines = [HeldLine("h1", "web", 4, soon), HeldLine(f"h{version + 1}", "web", 1, later)]
        assert model.apply_held("SKU-1", HeldSnapshot(version, lines))
    assert not model.apply_held("SKU-1", HeldSnapshot(100, []))  # not newer: ignored
    doc = msgspec.json.decode(model.document("SKU-1", "web") or b"")
    assert (doc["available"], doc["held"], doc["version"]) == (5, 5, 3 + 100)
    assert msgspec.json.decode(model.document("SKU-1", "store") or b"")["held"] == 0
    assert len(model.expiries) == 1  # one wake-up, not one per change
    assert model.expire(soon - 1) == 0
    time.sleep(max(0.0, (soon - now_ms() + 5) / 1000))
    assert model.expire(now_ms()) == 1
    doc = msgspec.json.decode(model.document("SKU-1", "web") or b"")
    # h1 stopped counting by itself; the version counts its expiry.
    assert (doc["available"], doc["held"], doc["version"]) == (9, 1, 3 + 100 + 1)
    assert model.next_expiry() == later and model.expired_holds == 1
    # A new position is served less the holds that remain.
    assert model.apply(served(projection("SKU-1", 4, available=20)))
    doc = msgspec.json.decode(model.document("SKU-1", "web") or b"")
    assert (doc["available"], doc["held"], doc["version"]) == (19, 1, 4 + 100 + 1)
    assert model.version("SKU-1") == 4


def test_a_held_sku_is_encoded_at_its_first_read_after_a_change() -> None:
    model = AvailabilityModel(["web", "store"], [5, 5])
    for sku in ("SKU-1", "SKU-2", "SKU-3"):
        assert model.apply(served(projection(sku, 3, available=10)))
    later = now_ms() + 120_000
    for version in range(1, 4):
        lines = [HeldLine(f"h{i}", "web", 1, later) for i in range(version)]
        assert model.apply_held("SKU-1", HeldSnapshot(version, lines))
    # Changed three times, read never: out of the lookup dict, still known and counted.
    assert "SKU-1" not in model.entries
    assert "SKU-1" in model and len(model) == 3
    assert model.next_expiry() == later  # its expiry is watched all the same
    entry = model.entry("SKU-1")
    assert entry is not None and model.entries["SKU-1"] is entry  # encoded once, kept
    doc = msgspec.json.decode(model.document("SKU-1", "web") or b"")
    assert (doc["available"], doc["held"], doc["version"]) == (7, 3, 3 + 3)
    # A new position of a held SKU waits for its read too, then counts the holds.
    assert model.apply(served(projection("SKU-1", 4, available=20)))
    assert "SKU-1" not in model.entries
    doc = msgspec.json.decode(model.document("SKU-1", "web") or b"")
    assert (doc["available"], doc["held"], doc["version"]) == (17, 3, 4 + 3)
    # Forgetting works on SKUs waiting for their read as on the others.
    assert model.apply_held("SKU-1", HeldSnapshot(4, []))
    assert model.retain({"SKU-2", "SKU-3"}) == 1
    assert model.entry("SKU-1") is None and "SKU-1" not in model and len(model) == 2
    assert model.entry("NEVER") is None


def test_with_a_listener_a_held_sku_is_encoded_at_once() -> None:
    model = AvailabilityModel(["web"], [5])
    seen: list[tuple[str, bytes | None]] = []
    model.changed = lambda sku: seen.append((sku, model.entries[sku][2]))
    assert model.apply(served(projection("SKU-1", 3, available=10, channels=["web"])))
    assert model.apply_held("SKU-1", HeldSnapshot(1, [HeldLine("h1", "web", 2, now_ms() + 60_000)]))
    assert [sku for sku, _ in seen] == ["SKU-1", "SKU-1"]
    assert msgspec.json.decode(seen[-1][1] or b"")["held"] == 2


def test_a_hold_on_two_skus_counts_as_one_expiry_whichever_sku_sees_it_first() -> None:
    model = AvailabilityModel(["web"], [5])
    for sku in ("SKU-1", "SKU-2"):
        assert model.apply(served(projection(sku, 1, available=10)))
    soon = now_ms() + 200
    for sku in ("SKU-1", "SKU-2"):
        assert model.apply_held(sku, HeldSnapshot(1, [HeldLine("cart-1", "web", 2, soon)]))
    time.sleep(max(0.0, (soon - now_ms() + 5) / 1000))
    # SKU-1 sees the expiry through a change of its lines (another hold), SKU-2 by the
    # expiry timer: one hold expired, not two.
    later = HeldLine("cart-2", "web", 1, now_ms() + 60_000)
    assert model.apply_delta("SKU-1", HeldDelta(1, 2, [later], []))
    assert model.expired_holds == 1
    assert model.expire(now_ms()) >= 1
    assert model.expired_holds == 1
    doc = msgspec.json.decode(model.document("SKU-2", "web") or b"")
    assert (doc["available"], doc["held"]) == (10, 0)
