"""``reconcile``: drift planted in Redis positions is found, exported, measured and corrected."""

from __future__ import annotations

import argparse
import csv
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from stocksync.agents.dlq import DeadLetterOut
from stocksync.agents.stages import Applier, SourceMessage, Translator
from stocksync.agents.topics import topic_names
from stocksync.codecs.events import Instant, instant_of_datetime
from stocksync.codecs.state import NodePosition, Position
from stocksync.config.settings import Settings
from stocksync.ops import commands
from stocksync.ops.access import Record
from stocksync.ops.reconcile import (
    BULK_EVENTS,
    compare,
    parse_counts,
    snapshot_messages,
)
from stocksync.readmodel import core
from stocksync.store import RedisStore, Write
from stocksync.store.layout import Keys
from stocksync.store.redis import open_client
from tests.ops.helpers import read_all, run

DAY_MS = 86_400_000


def at(hour: int, minute: int = 0) -> Instant:
    """The instant of 2026-11-27 hour:minute UTC."""
    return instant_of_datetime(datetime(2026, 11, 27, hour, minute, tzinfo=UTC))


@pytest.fixture(params=["redis", "redis-cluster"])
def any_settings(
    request: pytest.FixtureRequest, settings: Settings
) -> Settings:
    """``settings`` on the test's Redis database, or on the three-master Redis Cluster."""
    if request.param == "redis":
        return settings
    url = request.getfixturevalue("redis_cluster_url")
    return msgspec.structs.replace(settings, redis_url=url, redis_cluster=True)


def plant(settings: Settings, positions: Sequence[Position]) -> None:
    """Write positions (and their projections) as the applier would."""
    topology = core.topology_of(settings)

    async def main() -> None:
        store = RedisStore.from_url(
            settings.redis_url, Keys(settings.redis_namespace), topology=topology,
            cluster=settings.redis_cluster,
        )
        try:
            await store.resolve()
            if store.generation is None:
                await store.begin_generation("g-test")
            assert await store.write_batch([Write(p, 0) for p in positions]) == []
        finally:
            await store.close()

    run(main())


MODEL = [
    # A at dc-east: counted 100 at 09:00, -5 at 09:30: 95 as of 10:00 and now.
    Position(sku="A", version=1, nodes={
        "dc-east": NodePosition(snap=100, as_of=at(9), changes=[(at(9, 30), -5)]),
    }),
    # B at dc-east: counted 50 at 08:00, -3 at 10:30: 50 as of 10:00, 47 now.
    Position(sku="B", version=1, nodes={
        "dc-east": NodePosition(snap=50, as_of=at(8), changes=[(at(10, 30), -3)]),
    }),
    # N at dc-east: the model has a count newer (11:00) than the file's (10:00).
    Position(sku="N", version=1, nodes={"dc-east": NodePosition(snap=9, as_of=at(11))}),
]
COUNTS = """sku,node,on_hand,as_of
A,dc-east,90,2026-11-27T10:00:00Z
A,dc-west,10,2026-11-27T10:00:00Z
B,dc-east,50,2026-11-27T10:00:00Z
N,dc-east,4,2026-11-27T10:00:00Z
NEW-1,dc-west,7,2026-11-27T10:00:00+00:00
NEW-2,dc-west,0,2026-11-27T10:00:00Z
"""


def ns(file: Path, **fields: object) -> argparse.Namespace:
    """The arguments the CLI would pass."""
    base: dict[str, object] = {
        "file": str(file), "apply": False, "export": None, "metrics_file": None
    }
    base.update(fields)
    return argparse.Namespace(**base)


@pytest.fixture
def counts(tmp_path: Path) -> Path:
    path = tmp_path / "counts.csv"
    path.write_text(COUNTS)
    return path


def test_report_finds_the_planted_drift(
    any_settings: Settings, counts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = any_settings
    plant(settings, MODEL)
    export = tmp_path / "diff.csv"
    metrics = tmp_path / "reconcile.prom"
    assert commands.reconcile(
        settings, ns(counts, export=str(export), metrics_file=str(metrics))
    ) == 0
    out = capsys.readouterr().out
    assert "6 valid row(s), 0 invalid" in out
    assert "compared 5 row(s): 3 differ, total absolute drift 22 unit(s)" in out
    assert "skipped 1 row(s) whose count is older than the model's latest count" in out
    worst = out.split("worst 3 (file - model, as of each row's as_of):\n")[1].splitlines()
    assert [line.split() for line in worst[1:4]] == [
        ["A", "dc-west", "10", "0", "+10", "drift"],
        ["NEW-1", "dc-west", "7", "0", "+7", "unknown_sku"],
        ["A", "dc-east", "90", "95", "-5", "drift"],
    ]

    with export.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["sku"], r["node"], r["drift"], r["model_on_hand_now"]) for r in rows] == [
        ("A", "dc-west", "10", "0"),
        ("NEW-1", "dc-west", "7", "0"),
        ("A", "dc-east", "-5", "95"),
    ]
    assert rows[0]["as_of"] == "2026-11-27T10:00:00Z"

    text = metrics.read_text()
    assert 'stocksync_reconcile_drift_rows{outcome="differing"} 3.0' in text
    assert 'stocksync_reconcile_drift_rows{outcome="model_newer"} 1.0' in text
    assert 'stocksync_reconcile_drift_units{node="dc-west"} 17.0' in text
    assert 'stocksync_reconcile_drift_units{node="dc-east"} 5.0' in text
    assert "stocksync_reconcile_drift_max_units 10.0" in text
    assert read_all(settings, [topic_names(settings).stock]) == []  # nothing sent without --apply


def test_bad_rows_are_reported_by_line_and_block_apply(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "node,sku,as_of,on_hand,comment\n"
        "dc-east,A,2026-11-27T10:00:00Z,5,fine\n"
        "dc-east,B,2026-11-27T10:00:00Z,-1,negative\n"
        "dc-east,C,yesterday,4,no time\n"
        "dc-east,A,2026-11-27T10:00:00Z,6,twice\n"
        "dc-east,bad sku,2026-11-27T10:00:00Z,1,space\n"
    )
    assert commands.reconcile(settings, ns(path, apply=True)) == 1
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert err[0] == (
        f"stocksync reconcile: {path}: line 3: on_hand = '-1' is invalid: Expected `int` >= 0"
    )
    assert err[1].startswith(f"stocksync reconcile: {path}: line 4: as_of = 'yesterday'")
    assert err[2] == (
        f"stocksync reconcile: {path}: line 5: sku 'A' at node 'dc-east' is counted on line 2"
        " already"
    )
    assert "line 6: sku = 'bad sku' is invalid: expected 1-64 characters from A-Z" in err[3]
    assert "regex" not in err[3]
    assert err[4].startswith("stocksync reconcile: not applying: 4 invalid row(s)")
    assert "1 valid row(s), 4 invalid" in captured.out
    assert read_all(settings, [topic_names(settings).stock]) == []


def test_a_file_without_the_columns_is_refused(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "wrong.csv"
    path.write_text("item,qty\nA,1\n")
    assert commands.reconcile(settings, ns(path)) == 1
    assert "lacks sku, node, on_hand, as_of" in capsys.readouterr().err


def test_json_lines_are_read_too() -> None:
    parsed = parse_counts(
        b'{"sku":"A","node":"dc-east","on_hand":3,"as_of":"2026-11-27T10:00:00Z","x":1}\n'
        b"\n"
        b'{"sku":"B","node":"dc-east","on_hand":"3","as_of":"2026-11-27T10:00:00Z"}\n'
        b"[1]\n"
    )
    assert [(line, row.sku) for line, row in parsed.rows] == [(1, "A"), (3, "B")]
    assert parsed.problems == ["line 4: expected a JSON object with sku, node, on_hand, as_of"]


def test_snapshots_come_in_bulks_of_at_most_1000() -> None:
    text = "sku,node,on_hand,as_of\n" + "".join(
        f"S{i},dc-east,{i},2026-11-27T10:00:00Z\n" for i in range(1, 2502)
    )
    parsed = parse_counts(text.encode())
    differing = compare(parsed.rows, {}, core.Topology(channels=())).differing
    messages = snapshot_messages(differing, parsed.sha256, datetime(2026, 11, 28, tzinfo=UTC))
    assert [n for _, _, n in messages] == [BULK_EVENTS, BULK_EVENTS, 501]
    first = msgspec.json.decode(messages[0][1])[0]
    assert first["event_id"] == f"reconcile-{parsed.sha256[:16]}-2"
    again = snapshot_messages(differing, parsed.sha256, datetime(2026, 11, 29, tzinfo=UTC))
    assert msgspec.json.decode(again[0][1])[0]["event_id"] == first["event_id"]


def test_apply_publishes_snapshots_that_make_the_model_converge(
    any_settings: Settings, counts: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = any_settings
    plant(settings, MODEL)
    caplog.set_level(logging.INFO, logger="stocksync.audit")
    assert commands.reconcile(settings, ns(counts, apply=True)) == 0
    out = capsys.readouterr().out
    assert "published 3 stock.snapshot event(s) in 1 message(s)" in out
    (audit,) = [r for r in caplog.records if r.name == "stocksync.audit"]
    assert (audit.what, audit.count) == ("reconcile apply", 3)  # type: ignore[attr-defined]

    (message,) = read_all(settings, [topic_names(settings).stock])
    events = msgspec.json.decode(message.value or b"")
    assert [(e["sku"], e["node"], e["on_hand"], e["source"]) for e in events] == [
        ("A", "dc-east", 90, "reconcile"),
        ("A", "dc-west", 10, "reconcile"),
        ("NEW-1", "dc-west", 7, "reconcile"),
    ]
    assert {e["as_of"] for e in events} == {"2026-11-27T10:00:00Z"}

    # The worker's stages apply them to the same Redis; a second run finds no drift.
    apply_stock_messages(settings, [message_of(message)])
    assert commands.reconcile(settings, ns(counts)) == 0
    assert "compared 5 row(s): 0 differ, total absolute drift 0 unit(s)" in capsys.readouterr().out


def message_of(record: Record) -> SourceMessage:
    """The record as a translator takes it."""
    return SourceMessage(record.topic, record.partition, record.offset, record.key, record.value)


def apply_stock_messages(settings: Settings, messages: list[SourceMessage]) -> None:
    """Run stock messages through a translator and an applier writing to the test's Redis."""

    async def main() -> None:
        client = open_client(settings.redis_url, cluster=settings.redis_cluster)
        store = RedisStore(
            client, Keys(settings.redis_namespace), topology=core.topology_of(settings)
        )
        await store.resolve()
        applier = Applier(store=store, topology=core.topology_of(settings), window_ms=DAY_MS)

        class Outbox:
            async def send_effects(self, batches: dict[int, bytes]) -> None:
                await applier.process(list(batches.values()))

            async def send_dead_letters(self, letters: Sequence[DeadLetterOut]) -> None:
                raise AssertionError(f"dead letters: {letters!r}")

        translator = Translator(
            kind="stock", effects_partitions=1, outbox=Outbox(), store=None, window_ms=DAY_MS
        )
        try:
            await translator.process(messages)
        finally:
            await client.aclose()

    run(main())


def test_an_empty_key_space_is_a_warning_and_exit_1_not_a_report_of_everything_missing(
    any_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = any_settings
    path = tmp_path / "count.csv"
    path.write_text("sku,node,on_hand,as_of\nA,dc-east,5,2026-11-27T10:00:00Z\n")
    for apply in (False, True):
        assert commands.reconcile(settings, ns(path, apply=apply)) == 1
        err = capsys.readouterr().err
        assert "warning: the read model holds no SKU at all" in err
        assert f"keys {settings.redis_namespace}:*" in err
    assert "not applying: the model it would correct is empty" in err
    assert read_all(settings, [topic_names(settings).stock]) == []

    # One SKU anywhere in the key space, even one the file does not name: a real comparison.
    plant(settings, [Position(sku="OTHER", nodes={})])
    assert commands.reconcile(settings, ns(path)) == 0
    assert "no SKU at all" not in capsys.readouterr().err
