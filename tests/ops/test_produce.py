"""``stocksync produce``: routing by type, keys, bulk splitting, local rejections, the summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from stocksync.config.settings import Settings
from stocksync.daemon.services import TansuBroker
from stocksync.ops.produce import Summary, plan_line
from tests.ops.helpers import read_all

TOPICS = {"stock": "p.stock.v1", "orders": "p.orders.v1", "returns": "p.returns.v1"}


def event(type_: str, n: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "schema": 1,
        "event_id": f"e-{n}",
        "occurred_at": "2026-11-27T09:00:00Z",
        "source": "test",
        **fields,
    }


def snapshot(n: int, sku: str, on_hand: int = 5) -> dict[str, Any]:
    return event(
        "stock.snapshot", n, sku=sku, node="dc-east", on_hand=on_hand, as_of="2026-11-27T09:00:00Z"
    )


def order(n: int, order_id: str) -> dict[str, Any]:
    return event(
        "order.created",
        n,
        order_id=order_id,
        channel="web",
        lines=[{"line_id": "1", "sku": "A-1", "qty": 1}],
    )


def rma(n: int, rma_id: str) -> dict[str, Any]:
    lines = [{"line_id": "1", "sku": "A", "qty": 1}]
    return event("return.authorized", n, rma_id=rma_id, lines=lines)


def count(value: bytes) -> int:
    """Events in a message value."""
    decoded = msgspec.json.decode(value)
    return len(decoded) if isinstance(decoded, list) else 1


def line(value: object) -> bytes:
    return msgspec.json.encode(value)


def test_single_events_go_to_their_topic_under_the_contract_key() -> None:
    summary = Summary()
    cases = [(snapshot(1, "A-1"), "p.stock.v1", b"A-1"), (order(2, "o-9"), "p.orders.v1", b"o-9"),
             (rma(3, "r-4"), "p.returns.v1", b"r-4")]  # fmt: skip
    for n, (value, topic, key) in enumerate(cases, 1):
        raw = line(value)
        (out,) = plan_line(raw, n, TOPICS, summary)
        assert (out.topic, out.key, out.value, out.events, out.line) == (topic, key, raw, 1, n)
    assert summary.rejected == []


def test_a_bulk_line_of_one_topic_and_key_is_sent_as_written() -> None:
    cancelled = event("order.cancelled", 2, order_id="o-1")
    raw = b"[" + line(order(1, "o-1")) + b", " + line(cancelled) + b"]"
    (out,) = plan_line(raw, 1, TOPICS, Summary())
    assert (out.topic, out.key, out.value, out.events) == ("p.orders.v1", b"o-1", raw, 2)


def test_a_mixed_bulk_line_is_split_by_topic_and_order_key_and_bad_events_stay_out() -> None:
    summary = Summary()
    events = [snapshot(1, "A-1"), order(2, "o-1"), {"type": "stock.nonsense"}, snapshot(3, "B-2"),
              order(4, "o-2"), event("order.allocated", 5, order_id="o-1",
                                     lines=[{"line_id": "1", "node": "dc-east"}])]  # fmt: skip
    out = plan_line(line(events), 7, TOPICS, summary)
    got = [(o.topic, o.key, [e["event_id"] for e in json.loads(o.value)]) for o in out]
    # A stock bulk may mix SKUs under any key; order events travel under their own order.
    assert got == [
        ("p.stock.v1", b"A-1", ["e-1", "e-3"]),
        ("p.orders.v1", b"o-1", ["e-2", "e-5"]),
        ("p.orders.v1", b"o-2", ["e-4"]),
    ]
    ((number, why),) = summary.rejected
    assert number == 7
    assert why.startswith("line 7, event #2: unknown_type: ")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed_json"),
        (line(snapshot(1, "bad sku")), "invalid_field"),
        (line({**snapshot(1, "A"), "schema": 2}), "unsupported_schema"),
        (b"[]", "bulk_size"),
        (b"17", "not_an_event"),
    ],
)
def test_invalid_lines_are_rejected_with_number_and_reason(raw: bytes, reason: str) -> None:
    summary = Summary()
    assert plan_line(raw, 3, TOPICS, summary) == []
    ((number, why),) = summary.rejected
    assert (number, why.split(": ")[0:2]) == (3, ["line 3", reason])
    assert "regex" not in why


def test_a_bad_identifier_is_explained_in_words() -> None:
    summary = Summary()
    plan_line(line(snapshot(1, "bad sku")), 1, TOPICS, summary)
    assert summary.rejected == [(1, "line 1: invalid_field: Expected 1-64 characters from A-Z,"
                                    " a-z, 0-9 and . _ : / - - at `$.sku`")]  # fmt: skip


def test_topic_and_key_overrides_apply_to_every_message() -> None:
    raw = line([snapshot(1, "A-1"), order(2, "o-1")])
    out = plan_line(raw, 1, TOPICS, Summary(), topic="elsewhere", key="k")
    assert [(o.topic, o.key, o.events) for o in out] == [("elsewhere", b"k", 2)]
    assert out[0].value == raw


# --- end to end against the embedded broker -----------------------------------------


@pytest.mark.slow
def test_produce_a_file_with_a_bad_line(
    broker: TansuBroker, topic_prefix: str, tmp_path: Path
) -> None:
    lines = [
        line(snapshot(1, "A-1")),
        b"",  # blank lines are skipped
        b'{"type":"stock.snapshot","schema":1,"event_id":"x"}',  # line 3: fields missing
        line([snapshot(2, "B-1"), snapshot(3, "C-1"), order(4, "o-1")]),
        line(rma(5, "r-1")),
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    env |= {"STOCKSYNC_BROKER": broker.url, "STOCKSYNC_TOPIC_PREFIX": topic_prefix,
            "STOCKSYNC_DEV_STATE": str(tmp_path / "none.json")}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "stocksync", "produce", str(path)],
        env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    out = done.stdout.splitlines()
    assert out[0].startswith(f"sent 5 event(s) in 4 message(s) from 4 line(s) of {path}")
    assert f"  {topic_prefix}.orders.v1   1 event(s) in 1 message(s)" in out
    assert f"  {topic_prefix}.returns.v1  1 event(s) in 1 message(s)" in out
    assert f"  {topic_prefix}.stock.v1    3 event(s) in 2 message(s)" in out
    assert "rejected 1 line(s); their invalid events were not sent:" in out
    assert any(o.startswith("  line 3: invalid_field: Object missing required field") for o in out)

    settings = Settings(broker=broker.url, topic_prefix=topic_prefix)
    records = read_all(settings, [f"{topic_prefix}.{t}.v1" for t in ("stock", "orders", "returns")])
    got = sorted((r.topic.rsplit(".", 2)[1], r.key, count(r.value or b"")) for r in records)
    assert got == [("orders", b"o-1", 1), ("returns", b"r-1", 1), ("stock", b"A-1", 1),
                   ("stock", b"B-1", 2)]  # fmt: skip
