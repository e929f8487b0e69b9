"""``dlq list`` and ``dlq replay`` against Tansu: records built by the worker's own builder."""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime

import msgspec
import pytest

from stocksync.agents.dlq import dead_letter
from stocksync.agents.stages import Applier, SourceMessage, Translator
from stocksync.agents.topics import topic_names
from stocksync.config.settings import Settings
from stocksync.daemon.services import TansuBroker
from stocksync.ops import commands
from stocksync.ops.access import Record
from stocksync.readmodel import core
from stocksync.store import MemoryStore
from tests.ops.helpers import produce, read_all, run

NOW_MS = int(datetime(2026, 11, 27, 9, 0, tzinfo=UTC).timestamp() * 1000)
DAY_MS = 86_400_000

SNAPSHOT = {
    "type": "stock.snapshot", "schema": 1, "event_id": "erp-1",
    "occurred_at": "2026-11-27T09:00:03Z", "source": "erp", "sku": "TSHIRT-RED-M",
    "node": "dc-east", "on_hand": 120, "as_of": "2026-11-27T09:00:00Z",
}
CANCEL = {
    "type": "order.cancelled", "schema": 1, "event_id": "shop-c-1",
    "occurred_at": "2026-11-27T09:05:00Z", "source": "shop", "order_id": "9912",
}


Message = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]


def letter(settings: Settings, **fields: object) -> Message:
    """A dead-letter message for the DLQ topic, made by the worker's builder."""
    names = topic_names(settings)
    options: dict[str, object] = {
        "reason": "unknown_order", "message": "order '9912' is unknown", "topic": names.orders,
        "partition": 1, "offset": 7, "index": None, "key": b"9912", "correlation_id": None,
        "raw": msgspec.json.encode(CANCEL), "now_ms": NOW_MS,
    }
    options.update(fields)
    out = dead_letter(**options)  # type: ignore[arg-type]
    return (names.dlq, out.key, out.value, out.headers)


@pytest.fixture
def planted(settings: Settings) -> Settings:
    """Four dead letters: a single order event, a bulk element, a malformed one written
    before owners existed, a foreign one."""
    names = topic_names(settings)
    produce(
        settings,
        [
            letter(settings, correlation_id="ord-9912", owner="commerce"),
            letter(
                settings, reason="invalid_field", message="Expected `int`", topic=names.stock,
                partition=0, offset=3, index=2, key=b"erp-export-17",
                raw=msgspec.json.encode(SNAPSHOT), now_ms=NOW_MS + 1000, owner="warehouse",
            ),
            letter(
                settings, reason="malformed_json", message="not valid JSON", topic=names.stock,
                partition=0, offset=4, key=b"SKU-\xff", raw=b"{oops\n", now_ms=NOW_MS + 2000,
            ),
            letter(
                settings, reason="unknown_order", topic="someone.elses.topic",
                now_ms=NOW_MS + 3000, owner="commerce",
            ),
        ],
    )
    return settings


def ns(**fields: object) -> argparse.Namespace:
    """The arguments the CLI would pass."""
    base: dict[str, object] = {
        "reason": None, "limit": None, "since": None, "dry_run": False, "config": None,
        "owner": None, "show_body": False,
    }
    base.update(fields)
    return argparse.Namespace(**base)


def test_list_prints_one_line_per_record(
    planted: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert commands.dlq_list(planted, ns()) == 0
    lines = capsys.readouterr().out.splitlines()
    names = topic_names(planted)
    assert lines[0] == (
        f"2026-11-27T09:00:00.000Z  unknown_order  owner=commerce  {names.orders}[1]@7  key=9912"
        "  cid=ord-9912  order '9912' is unknown"
    )
    assert lines[1].startswith(
        f"2026-11-27T09:00:01.000Z  invalid_field  owner=warehouse  {names.stock}[0]@3#2"
    )
    assert "  malformed_json  owner=unowned  " in lines[2]  # a record of before owners
    assert "key=erp-export-17  cid=-  Expected `int`" in lines[1]
    assert "key=SKU-\ufffd" in lines[2]  # an undecodable key byte is replaced, not printed raw
    assert lines[-1] == "4 dead-lettered event(s)"


def test_list_filters_by_reason_and_limits(
    planted: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert commands.dlq_list(planted, ns(reason="unknown_order", limit=1)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert "someone.elses.topic" in lines[0]  # the newest one
    assert lines[1] == "2 dead-lettered event(s) with reason 'unknown_order' (showing the newest 1)"


def test_list_filters_by_owner_and_shows_bodies(
    planted: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert commands.dlq_list(planted, ns(owner="commerce", show_body=True)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert "owner=commerce" in lines[0] and "owner=commerce" in lines[2]
    # The event as received, on one line.
    body = msgspec.json.format(msgspec.json.encode(CANCEL), indent=0).decode()
    assert lines[1] == f"    body: {body}" and '"order_id": "9912"' in body
    assert lines[-1] == "2 dead-lettered event(s) owned by 'commerce'"
    assert commands.dlq_list(planted, ns(owner="unowned", reason="malformed_json",
                                        show_body=True)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "    body (not JSON): {oops\\n"  # the line break shown, not made
    assert lines[-1] == (
        "1 dead-lettered event(s) with reason 'malformed_json' owned by 'unowned'"
    )
    assert commands.dlq_list(planted, ns(owner="finance")) == 0
    assert capsys.readouterr().out == "0 dead-lettered event(s) owned by 'finance'\n"


def test_bodies_of_pretty_printed_binary_and_truncated_events(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    names = topic_names(settings)
    produce(settings, [
        letter(settings, raw=b'{\n  "type": "order.cancelled",\n  "order_id": "9912"\n}'),
        letter(settings, reason="malformed_json", raw=b"\xff\xfe\x00", now_ms=NOW_MS + 1),
        letter(settings, reason="malformed_json", topic=names.stock, raw=b"A" * 1_200_000,
               now_ms=NOW_MS + 2),
    ])
    assert commands.dlq_list(settings, ns(show_body=True)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == '    body: {"type": "order.cancelled", "order_id": "9912"}'
    assert lines[3] == "    body (not UTF-8, base64): //4A"
    assert lines[5].startswith(
        "    body (truncated: the first 65536 of 1200000 bytes, as text; sha256 "
    )
    assert lines[5].endswith("): " + "A" * 65536)


def test_replay_filters_by_owner(planted: Settings, capsys: pytest.CaptureFixture[str],
                                 caplog: pytest.LogCaptureFixture) -> None:
    names = topic_names(planted)
    caplog.set_level(logging.INFO, logger="stocksync.audit")
    assert commands.dlq_replay(planted, ns(owner="warehouse")) == 0
    assert "sending 1 of 1 matching dead-lettered event(s)" in capsys.readouterr().out
    (only,) = read_all(planted, names.sources)
    assert (only.topic, only.key) == (names.stock, b"erp-export-17")
    (line,) = [r for r in caplog.records if r.name == "stocksync.audit"]
    assert line.owner == "warehouse"  # type: ignore[attr-defined]


def test_list_without_a_dlq_topic(
    broker: TansuBroker, redis_url: str, topic_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(broker=broker.url, redis_url=redis_url, topic_prefix=topic_prefix)
    assert commands.dlq_list(settings, ns()) == 0
    assert capsys.readouterr().out == "0 dead-lettered event(s)\n"


def test_dry_run_sends_nothing(planted: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.dlq_replay(planted, ns(dry_run=True)) == 0
    out = capsys.readouterr().out
    names = topic_names(planted)
    assert "would send 3 of 4 matching dead-lettered event(s)" in out
    assert f"[1/3] would send {names.orders}[1]@7 (unknown_order) to {names.orders} key=9912" in out
    assert "skip  " in out and "is not a source topic of this configuration" in out
    assert read_all(planted, names.sources) == []


def test_replay_sends_original_bytes_and_keys(
    planted: Settings, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    names = topic_names(planted)
    caplog.set_level(logging.INFO, logger="stocksync.audit")
    assert commands.dlq_replay(planted, ns()) == 0
    out = capsys.readouterr().out
    assert "[3/3] sent" in out

    records = read_all(planted, names.sources)
    by_topic: dict[str, list[Record]] = {}
    for rec in records:
        by_topic.setdefault(rec.topic, []).append(rec)
    (order,) = by_topic[names.orders]
    assert order.key == b"9912"
    assert order.value == msgspec.json.encode(CANCEL)
    assert order.header("correlation_id") == "ord-9912"
    stock = sorted(by_topic[names.stock], key=lambda r: r.key or b"")
    # The bulk element goes alone, with the bulk message's key; bytes exactly as received.
    assert [(r.key, r.value) for r in stock] == [
        (b"SKU-\xff", b"{oops\n"),
        (b"erp-export-17", msgspec.json.encode(SNAPSHOT)),
    ]
    assert stock[1].header("correlation_id") is None

    (line,) = [r for r in caplog.records if r.name == "stocksync.audit"]
    assert line.what == "dlq replay"  # type: ignore[attr-defined]
    assert line.count == 3  # type: ignore[attr-defined]
    assert line.who  # type: ignore[attr-defined]
    assert line.when.endswith("Z")  # type: ignore[attr-defined]


def test_replay_filters_by_reason_since_and_limit(
    planted: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    names = topic_names(planted)
    since = datetime(2026, 11, 27, 9, 0, 1, tzinfo=UTC)
    assert commands.dlq_replay(planted, ns(since=since, limit=1)) == 0
    (only,) = read_all(planted, names.sources)
    assert (only.topic, only.key) == (names.stock, b"erp-export-17")
    assert commands.dlq_replay(planted, ns(reason="malformed_json")) == 0
    assert len(read_all(planted, names.sources)) == 2


def test_a_rejected_order_event_is_rekeyed_to_its_order(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    names = topic_names(settings)
    produce(settings, [letter(settings, reason="key_mismatch", key=b"other-order", index=0)])
    assert commands.dlq_replay(settings, ns()) == 0
    assert "[key b'other-order' -> '9912' (the event's own id)]" in capsys.readouterr().out
    (sent,) = read_all(settings, [names.orders])
    assert sent.key == b"9912"


def test_replaying_twice_applies_once(planted: Settings) -> None:
    """What makes replay safe: a replayed event that applied once is skipped the second time."""
    names = topic_names(planted)
    assert commands.dlq_replay(planted, ns(reason="invalid_field")) == 0
    assert commands.dlq_replay(planted, ns(reason="invalid_field")) == 0
    replayed = read_all(planted, [names.stock])
    assert len(replayed) == 2
    store = run(MemoryStore.fresh(core.Topology(channels=())))
    applier = Applier(store=store, topology=core.Topology(channels=()), window_ms=DAY_MS)

    class Outbox:
        async def send_effects(self, batches: dict[int, bytes]) -> None:
            await applier.process(list(batches.values()))

        async def send_dead_letters(self, letters: object) -> None:
            raise AssertionError(f"unexpected dead letters {letters!r}")

    translator = Translator(
        kind="stock", effects_partitions=1, outbox=Outbox(), store=None, window_ms=DAY_MS
    )
    messages = [
        SourceMessage(r.topic, r.partition, r.offset, r.key, r.value) for r in replayed
    ]

    async def feed() -> None:
        for message in messages:
            await translator.process([message])

    run(feed())
    # Applied by the first copy, skipped for the second.
    assert store.version_of("TSHIRT-RED-M") == 1


def test_a_truncated_record_is_not_replayed_and_says_why(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record cut to fit the broker holds only the head of its event: replaying it would
    send something else, so it is skipped with what to do, and the others still replay."""
    names = topic_names(settings)
    huge = b"A" * 1_200_000
    produce(settings, [
        letter(settings, reason="malformed_json", message="not valid JSON", topic=names.stock,
               partition=0, offset=9, key=b"SKU-1", raw=huge),
        letter(settings),
    ])
    assert commands.dlq_list(settings, ns()) == 0
    listed = capsys.readouterr().out
    assert "[truncated: 1200000 bytes, sha256 " in listed
    assert commands.dlq_replay(settings, ns()) == 0
    out = capsys.readouterr().out
    assert "skip  " in out and f"{names.stock}[0]@9" in out
    assert "cannot be replayed whole" in out and f"take the original from {names.stock}[0]@9" in out
    assert "sending 1 of 2 matching dead-lettered event(s)" in out
    (sent,) = read_all(settings, names.sources)
    assert (sent.topic, sent.value) == (names.orders, msgspec.json.encode(CANCEL))
