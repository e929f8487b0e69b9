"""``stocksync reconcile FILE``: compare the read model with an ERP stock count.

FILE is CSV with a header naming ``sku,node,on_hand,as_of`` (in any order,
other columns ignored) or JSON lines with those fields. Each row says "at
``as_of`` there were ``on_hand`` units of ``sku`` at ``node``". The model's
figure compared with it is its ``on_hand`` *as of that moment* (its count plus
the physical changes up to ``as_of``), so movements after the export are not
mistaken for drift; where the model holds a count newer than the row's, the
row cannot change anything and is reported apart.

With ``--apply`` the differing rows are sent to the stock topic as bulk
``stock.snapshot`` messages (``source = "reconcile"``, ``event_id`` derived from
the file's SHA-256 and the row's line, so sending the same file twice applies
once), which makes the model converge: ``on_hand`` becomes the count plus the
changes after ``as_of``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final, TextIO

import msgspec
from msgspec import Meta

from stocksync.agents.topics import topic_names
from stocksync.codecs.events import Identifier, Instant, instant_of_datetime
from stocksync.codecs.state import Position
from stocksync.config.addresses import redacted_url
from stocksync.config.settings import Settings
from stocksync.ops.access import (
    OperateError,
    Refused,
    audit,
    existing_topics,
    open_producer,
    open_store,
)
from stocksync.readmodel import core
from stocksync.store import StoreError

__all__ = [
    "BULK_EVENTS",
    "CountRow",
    "Difference",
    "ParsedFile",
    "Report",
    "compare",
    "parse_counts",
    "reconcile",
    "snapshot_messages",
    "write_metrics",
]

log = logging.getLogger("stocksync.operate")

#: Most events in one published bulk message.
BULK_EVENTS: Final = 1000
#: Rows shown in the report's worst list.
WORST: Final = 10
#: SKUs loaded from Redis per round trip.
_PAGE: Final = 1000
_FIELDS: Final = ("sku", "node", "on_hand", "as_of")


class CountRow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One counted (sku, node) of the file."""

    sku: Identifier
    node: Identifier
    on_hand: Annotated[int, Meta(ge=0)]
    as_of: Annotated[datetime, Meta(tz=True)]


class ParsedFile(msgspec.Struct, frozen=True, kw_only=True):
    """The valid rows with their line numbers, the bad rows' messages, the file's digest."""

    rows: list[tuple[int, CountRow]]
    problems: list[str]
    sha256: str


class Difference(msgspec.Struct, frozen=True, kw_only=True):
    """One compared row."""

    line: int
    row: CountRow
    #: The model's on_hand as of the row's as_of; None when the model's count is newer.
    model: int | None
    #: The model's on_hand now.
    model_now: int
    #: ``ok``, ``drift``, ``unknown_sku`` (never seen by the model) or ``model_newer``.
    status: str

    @property
    def drift(self) -> int:
        """The file's count minus the model's (0 when not comparable)."""
        return 0 if self.model is None else self.row.on_hand - self.model


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """What a comparison found."""

    compared: int
    differing: list[Difference]
    newer: int

    @property
    def total_drift(self) -> int:
        """Sum of absolute differences."""
        return sum(abs(d.drift) for d in self.differing)


# --- reading the file -------------------------------------------------------------


#: What the identifier pattern of the event contract allows, in words.
_IDENTIFIER_WORDS: Final = "expected 1-64 characters from A-Z, a-z, 0-9 and . _ : / -"


def _problem(line: int, exc: msgspec.ValidationError, raw: object) -> str:
    text = str(exc)
    field = text.rsplit("`$.", 1)[1].rstrip("`") if "`$." in text else None
    if field is not None and isinstance(raw, dict):
        shown = repr(raw.get(field))
        why = text.split(" - at ")[0]
        if "matching regex" in why:  # the identifier pattern: say it in words
            why = _IDENTIFIER_WORDS
        return f"line {line}: {field} = {shown} is invalid: {why}"
    return f"line {line}: {text}"


def parse_counts(data: bytes, name: str = "FILE") -> ParsedFile:
    """Parse and validate a CSV or JSON-lines stock count; bad rows become problems."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Refused(f"{name} is not UTF-8 text (bad byte at offset {exc.start})") from None
    first = text.lstrip()[:1]
    raws = _json_lines(text) if first == "{" else _csv_rows(text, name)
    rows: list[tuple[int, CountRow]] = []
    problems: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    for line, raw in raws:
        if isinstance(raw, str):
            problems.append(f"line {line}: {raw}")
            continue
        try:
            row = msgspec.convert(raw, CountRow, strict=False)
        except msgspec.ValidationError as exc:
            problems.append(_problem(line, exc, raw))
            continue
        pair = (row.sku, row.node)
        if pair in seen:
            problems.append(
                f"line {line}: sku {row.sku!r} at node {row.node!r} is counted on line"
                f" {seen[pair]} already"
            )
            continue
        seen[pair] = line
        rows.append((line, row))
    if not rows and not problems:
        problems.append("no rows: expected a header line and at least one count")
    return ParsedFile(rows=rows, problems=problems, sha256=digest)


def _json_lines(text: str) -> Iterable[tuple[int, dict[str, object] | str]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            yield number, f"not valid JSON: {exc}"
            continue
        if not isinstance(value, dict):
            yield number, "expected a JSON object with sku, node, on_hand, as_of"
        else:
            yield number, value


def _csv_rows(text: str, name: str) -> Iterable[tuple[int, dict[str, object] | str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [f for f in _FIELDS if f not in header]
    if missing:
        raise Refused(
            f"{name}: the CSV header {','.join(header) or '(none)'!r} lacks {', '.join(missing)};"
            f" expected a header line with {','.join(_FIELDS)} (or JSON lines with those fields)"
        )
    reader.fieldnames = header
    for record in reader:
        if not any((v or "").strip() for k, v in record.items() if k is not None):
            continue
        if None in record or any(record.get(f) is None for f in _FIELDS):
            yield reader.line_num, f"expected {len(header)} columns as in the header"
            continue
        yield reader.line_num, {f: (record[f] or "").strip() for f in _FIELDS}


# --- comparing ----------------------------------------------------------------------


def _on_hand_as_of(
    pos: Position, node: str, moment: Instant, topology: core.Topology
) -> int | None:
    """The model's on_hand at ``node`` as of ``moment``, or None if it has a newer count."""
    state = pos.nodes.get(node)
    if state is None:
        return 0
    if state.as_of is not None and state.as_of > moment:
        return None
    copy = core.copy_position(pos)
    at_node = copy.nodes[node]
    at_node.changes = [c for c in at_node.changes if c[0] <= moment]
    return core.node_view(copy, node, topology).on_hand


def compare(
    rows: Iterable[tuple[int, CountRow]], positions: dict[str, Position], topology: core.Topology
) -> Report:
    """Compare each counted row with the model's positions."""
    compared = newer = 0
    differing: list[Difference] = []
    for line, row in rows:
        pos = positions.get(row.sku)
        if pos is None:
            diff = Difference(line=line, row=row, model=0, model_now=0, status="unknown_sku")
        else:
            then = _on_hand_as_of(pos, row.node, instant_of_datetime(row.as_of), topology)
            now = core.node_view(pos, row.node, topology).on_hand
            status = "model_newer" if then is None else "ok" if then == row.on_hand else "drift"
            diff = Difference(line=line, row=row, model=then, model_now=now, status=status)
        if diff.status == "model_newer":
            newer += 1
            continue
        compared += 1
        if diff.drift:
            differing.append(diff)
    differing.sort(key=lambda d: (-abs(d.drift), d.row.sku, d.row.node))
    return Report(compared=compared, differing=differing, newer=newer)


async def _load_positions(
    settings: Settings, skus: list[str]
) -> tuple[dict[str, Position], str, bool]:
    """The positions of ``skus``, the namespace read, and whether it holds no SKU at all."""
    store = open_store(settings)
    try:
        namespace = await store.resolve()
        found: dict[str, Position] = {}
        if store.generation is None:  # no model at all (never built, or Redis lost it)
            return found, namespace, True
        for start in range(0, len(skus), _PAGE):
            found.update(await store.load_positions(skus[start : start + _PAGE]))
        empty = not found and not await store.any_sku()
        return found, namespace, empty
    except StoreError as exc:
        raise OperateError(f"reading the model from Redis failed: {exc}") from exc
    finally:
        await store.close()


# --- output -------------------------------------------------------------------------


def _print_report(out: TextIO, name: str, parsed: ParsedFile, report: Report) -> None:
    print(
        f"reconcile {name} (sha256 {parsed.sha256[:12]}): {len(parsed.rows)} valid row(s),"
        f" {len(parsed.problems)} invalid",
        file=out,
    )
    print(
        f"compared {report.compared} row(s): {len(report.differing)} differ, total absolute"
        f" drift {report.total_drift} unit(s)",
        file=out,
    )
    if report.newer:
        print(
            f"skipped {report.newer} row(s) whose count is older than the model's latest count",
            file=out,
        )
    worst = report.differing[:WORST]
    if not worst:
        return
    print(f"worst {len(worst)} (file - model, as of each row's as_of):", file=out)
    width = max(len(d.row.sku) for d in worst)
    nwidth = max(len(d.row.node) for d in worst)
    print(
        f"  {'SKU':<{width}}  {'NODE':<{nwidth}}  {'FILE':>8}  {'MODEL':>8}  {'DRIFT':>8}  STATUS",
        file=out,
    )
    for d in worst:
        print(
            f"  {d.row.sku:<{width}}  {d.row.node:<{nwidth}}  {d.row.on_hand:>8}"
            f"  {d.model if d.model is not None else '-':>8}  {d.drift:>+8}  {d.status}",
            file=out,
        )


def _export(path: str, report: Report) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["sku", "node", "as_of", "file_on_hand", "model_on_hand", "drift",
             "model_on_hand_now", "status", "line"]
        )
        for d in report.differing:
            writer.writerow(
                [d.row.sku, d.row.node, _rfc3339(d.row.as_of), d.row.on_hand, d.model, d.drift,
                 d.model_now, d.status, d.line]
            )


def write_metrics(path: str, parsed: ParsedFile, report: Report, at: datetime) -> None:
    """Write the drift as Prometheus gauges, in the node-exporter textfile collector's format."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    rows = Gauge(
        "stocksync_reconcile_drift_rows", "Rows of the last reconcile run, by outcome.",
        ["outcome"], registry=registry,
    )
    rows.labels("compared").set(report.compared)
    rows.labels("differing").set(len(report.differing))
    rows.labels("invalid").set(len(parsed.problems))
    rows.labels("model_newer").set(report.newer)
    units = Gauge(
        "stocksync_reconcile_drift_units",
        "Sum of absolute on_hand differences (file - model) of the last run, by node.",
        ["node"], registry=registry,
    )
    per_node = {row.node: 0 for _, row in parsed.rows}
    for d in report.differing:
        per_node[d.row.node] += abs(d.drift)
    for node, total in sorted(per_node.items()):
        units.labels(node).set(total)
    Gauge(
        "stocksync_reconcile_drift_max_units", "Largest single difference of the last run.",
        registry=registry,
    ).set(max((abs(d.drift) for d in report.differing), default=0))
    Gauge(
        "stocksync_reconcile_drift_timestamp_seconds", "When the last reconcile run compared.",
        registry=registry,
    ).set(at.timestamp())
    write_to_textfile(path, registry)  # a temporary file renamed into place


# --- applying -----------------------------------------------------------------------


def _rfc3339(moment: datetime) -> str:
    text = moment.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def snapshot_messages(
    differing: Iterable[Difference], sha256: str, now: datetime
) -> list[tuple[bytes, bytes, int]]:
    """``(key, bulk JSON array, events)`` messages of stock.snapshot events for the rows."""
    occurred = _rfc3339(now)
    tag = sha256[:16]
    events = [
        {
            "type": "stock.snapshot",
            "schema": 1,
            "event_id": f"reconcile-{tag}-{d.line}",
            "occurred_at": occurred,
            "source": "reconcile",
            "correlation_id": f"reconcile-{tag}",
            "sku": d.row.sku,
            "node": d.row.node,
            "on_hand": d.row.on_hand,
            "as_of": _rfc3339(d.row.as_of),
        }
        for d in sorted(differing, key=lambda d: d.line)
    ]
    return [
        (
            f"reconcile-{tag}-{n}".encode(),
            msgspec.json.encode(events[start : start + BULK_EVENTS]),
            len(events[start : start + BULK_EVENTS]),
        )
        for n, start in enumerate(range(0, len(events), BULK_EVENTS))
    ]


async def _publish(
    settings: Settings, messages: list[tuple[bytes, bytes, int]], tag: str
) -> None:
    topic = topic_names(settings).stock
    if topic not in await existing_topics(settings):
        raise OperateError(
            f"the stock topic {topic!r} does not exist; start a worker once (it creates the"
            " topics) or check topic_prefix"
        )
    producer = await open_producer(settings)
    try:
        pending = [
            await producer.send(topic, key=key, value=value,
                                headers=[("correlation_id", f"reconcile-{tag}".encode())])
            for key, value, _ in messages
        ]
        for fut in pending:
            await fut
    except Exception as exc:
        raise OperateError(f"publishing the corrections failed: {exc!r}") from exc
    finally:
        await producer.stop()


def _warn_empty(err: TextIO, settings: Settings, namespace: str) -> None:
    print(
        f"stocksync reconcile: warning: the read model holds no SKU at all (Redis"
        f" {redacted_url(settings.redis_url)}, keys {namespace}:*), so every row shows as"
        " missing. Check redis_url and redis_namespace (or topic_prefix, which it follows),"
        " or start the worker first",
        file=err,
    )


async def reconcile(
    settings: Settings,
    out: TextIO,
    err: TextIO,
    path: str,
    *,
    apply: bool,
    export: str | None,
    metrics_file: str | None,
    who: str,
) -> int:
    """Compare FILE with the model, report, export, publish; return the exit status."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise Refused(f"cannot read {path!r}: {exc.strerror}") from None
    parsed = parse_counts(data, path)
    for problem in parsed.problems:
        print(f"stocksync reconcile: {path}: {problem}", file=err)
    skus = list(dict.fromkeys(row.sku for _, row in parsed.rows))
    positions, namespace, empty = await _load_positions(settings, skus)
    log.debug("compared against the model in namespace %s", namespace)
    report = compare(parsed.rows, positions, core.topology_of(settings))
    _print_report(out, path, parsed, report)
    now = datetime.now(UTC)
    if export:
        _export(export, report)
        print(f"wrote {len(report.differing)} difference(s) to {export}", file=out)
    if metrics_file:
        write_metrics(metrics_file, parsed, report, now)
        print(f"wrote drift metrics to {metrics_file}", file=out)
    if not apply:
        if empty:
            _warn_empty(err, settings, namespace)
        return 1 if parsed.problems or empty else 0
    if parsed.problems:
        raise Refused(
            f"not applying: {len(parsed.problems)} invalid row(s) in {path}; fix them and run"
            " again (the valid rows' report is above)"
        )
    if empty:
        _warn_empty(err, settings, namespace)
        print("stocksync reconcile: not applying: the model it would correct is empty", file=err)
        return 1
    if not report.differing:
        print("nothing to apply: the model agrees with every row", file=out)
        return 0
    messages = snapshot_messages(report.differing, parsed.sha256, now)
    tag = parsed.sha256[:16]
    await _publish(settings, messages, tag)
    events = sum(n for _, _, n in messages)
    print(
        f"published {events} stock.snapshot event(s) in {len(messages)} message(s) to"
        f" {topic_names(settings).stock} (source 'reconcile', event ids reconcile-{tag}-LINE)",
        file=out,
    )
    audit(who, "reconcile apply", events, file=path, sha256=parsed.sha256,
          messages=len(messages), total_drift=report.total_drift)
    return 0
