"""Poison input through the real broker and worker: nothing a producer sends stops it.

Each input of issue 9 goes to every source topic, between valid events: the
events after it must be applied (``Cluster.settle`` sends sentinels after
everything and waits for them) and the dead-letter topic must hold one record
per bad input, truncated where the whole record would exceed the broker's
limit (Tansu reports none, so the worker's 1,000,000-byte fallback holds).
The test producer raises its own ``max_request_size`` to send 10 MB; Tansu
accepts messages that large without any topic setting.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Callable

import pytest

from stocksync.codecs.messages import Reason, decode_message
from tests.e2e.events import Msg, Wire, bad, bulk, single
from tests.e2e.harness import Cluster

__all__: list[str] = []

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SKU = "TEE-RED-M"
HEAD = 64 * 1024
LIMIT = 1_000_000


def _bulk_of(w: Wire, n: int) -> bytes:
    """A JSON array of ``n`` valid stock events: one too many is a bulk_size rejection."""
    events = [w.adjusted(SKU, "dc-east", 1, 5) for _ in range(n)]
    return json.dumps(events, separators=(",", ":")).encode()


def _reason(value: bytes) -> str:
    """What the decoder makes of a single-event ``value``; internal_error if it raises (the
    translator's error boundary), whichever the decoder of the day does."""
    try:
        (rejection,) = decode_message(value).rejections
    except Exception:  # exactly what the boundary catches
        return Reason.INTERNAL_ERROR
    return rejection.reason


def poison(w: Wire, kind: str, key: str, rng: random.Random) -> list[Msg]:
    """The inputs of the issue that crashed the worker, on ``kind``'s topic."""
    nested = b'{"unknown":' * 1_000 + b"1" + b"}" * 1_000
    far = json.dumps(w.adjusted(SKU, "dc-east", 1, 5)
                     | {"occurred_at": "9999-12-31T23:59:59-01:00"}).encode()
    return [
        single(bad(nested, _reason(nested)), kind=kind, key=key),
        single(bad(far, _reason(far)), kind=kind, key=key),
        single(bad(b"A" * 1_048_576, Reason.MALFORMED_JSON), kind=kind, key=key),
        single(bad(b"\x01" * 900_000, Reason.MALFORMED_JSON), kind=kind, key=key),
        single(bad(rng.randbytes(10_000_000), Reason.MALFORMED_JSON), kind=kind, key=key),
        single(bad(_bulk_of(w, 10_001), Reason.BULK_SIZE), kind=kind, key=key),
        # Small bad ones too, with a huge correlation id header and a huge key.
        single(bad(b"{nope", Reason.MALFORMED_JSON), kind=kind, key=key,
               headers=[("correlation_id", b"c" * 600_000)]),
        single(bad(b"{nope", Reason.MALFORMED_JSON), kind=kind, key="k" * 900_000),
    ]


def test_oversized_and_poison_input_on_every_topic_is_dead_lettered_and_the_rest_applies(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(partitions=2)
    worker = cluster.start_worker()
    w = cluster.wire
    rng = random.Random(cluster.seed())
    lines = [(str(i), SKU, 1, "dc-east") for i in range(500)]
    big_order = w.created("o-big", lines, at=20) | {"correlation_id": "c" * 3_000}
    huge_cid = w.created("o-huge", lines, at=21) | {"correlation_id": "h" * 65_536}
    # 10,000 snapshots of one SKU: about 1.2 MB of effects for one partition, split.
    export = [w.snapshot(SKU, "dc-west", i, 1 + i / 10_000) for i in range(10_000)]
    messages: list[Msg] = [single(w.snapshot(SKU, "dc-east", 5_000, 1))]
    for kind, key in (("stock", SKU), ("orders", "o-1"), ("returns", "rma-1")):
        messages += poison(w, kind, key, rng)
        messages.append(single(w.adjusted(SKU, "dc-east", 7, 10)))
    messages += [
        single(big_order),
        single(huge_cid),
        bulk("stock", "erp-export", export),
        # A mix after it all: a bulk with a bad element, an order, a return.
        bulk("stock", "count-1", [
            w.adjusted(SKU, "dc-west", 3, 30),
            bad(w.adjusted(SKU, "dc-west", 0, 30), Reason.INVALID_FIELD),
        ]),
        single(w.shipped("o-big", "dc-east", {"1": 1}, at=31)),
        single(w.received("rma-9", "dc-east", [("1", 2, SKU)], at=32)),
    ]
    cluster.send(messages)
    cluster.settle(timeout=180)
    assert worker.alive, worker.tail()

    reference = cluster.check_model()
    # The valid giants were applied, not dead-lettered: 1,000 units reserved at dc-east,
    # one shipped; the export's last count (9,999) plus 3 at dc-west.
    seen = cluster.read_model()
    assert seen.nodes[(SKU, "dc-east")].reserved == 999
    assert seen.nodes[(SKU, "dc-west")].on_hand == 10_002
    cluster.check_dead_letters(reference, exactly_once=False)

    letters = {letter.spot: letter for letter in cluster.read_dead_letters(len(reference.dead))}
    truncated = 0
    for expected in reference.dead:
        record = letters[expected.spot].record
        whole = len(expected.raw) < LIMIT // 2 and len(expected.key or "") < 1024
        if whole and not record.get("truncated"):
            continue
        truncated += 1
        assert record["truncated"] is True
        assert record["event_length"] == len(expected.raw)
        assert record["event_sha256"] == hashlib.sha256(expected.raw).hexdigest()
        head = (record["event_text"].encode() if "event_text" in record
                else base64.b64decode(record["event_b64"]))
        assert expected.raw.startswith(head)
        assert HEAD - 3 <= len(head) <= HEAD or head == expected.raw
        assert len(json.dumps(record)) < LIMIT
        if expected.correlation_id is not None:
            assert record["correlation_id"] == expected.correlation_id[:1024]
        assert record["key"] == (expected.key or "")[:1024]
    # 1 MB of A, 900 KB of \x01, 10 MB, 10,001 events, the long header, the long key; x3.
    assert truncated == 18
    assert worker.alive
    metrics = worker.metrics()
    assert metrics["stocksync_dead_letters_total"] >= len(reference.dead)
