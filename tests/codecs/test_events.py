"""Decoding source messages: the contract's examples, each constraint, bulk messages, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from stocksync.codecs.events import (
    MAX_BULK,
    MAX_LINES,
    MAX_QUANTITY,
    OrderAllocated,
    OrderCreated,
    OrderShipped,
    ReturnInspected,
    StockSnapshot,
    event_schema,
    instant_of,
    instant_of_datetime,
)
from stocksync.codecs.messages import MAX_DEPTH, Reason, decode_message

#: The examples of ``contracts/events-v1.md``, byte for byte.
EXAMPLES = [
    b'{"type":"stock.snapshot","schema":1,"event_id":"erp-000183","occurred_at":"2026-11-27T09:00:03Z","source":"erp","sku":"TSHIRT-RED-M","node":"dc-east","on_hand":120,"as_of":"2026-11-27T09:00:00Z"}',
    b'{"type":"order.created","schema":1,"event_id":"shop-ord-9912-c","occurred_at":"2026-11-27T09:01:10Z","source":"shop","correlation_id":"ord-9912","order_id":"9912","channel":"web","lines":[{"line_id":"1","sku":"TSHIRT-RED-M","qty":2}]}',
    b'{"type":"order.allocated","schema":1,"event_id":"oms-ord-9912-a","occurred_at":"2026-11-27T09:01:12Z","source":"oms","correlation_id":"ord-9912","order_id":"9912","lines":[{"line_id":"1","node":"dc-east"}]}',
    b'{"type":"order.shipped","schema":1,"event_id":"wms-shp-551","occurred_at":"2026-11-27T11:40:00Z","source":"wms-east","correlation_id":"ord-9912","order_id":"9912","shipment_id":"551","node":"dc-east","lines":[{"line_id":"1","qty":2}]}',
    b'{"type":"return.inspected","schema":1,"event_id":"rt-77-i","occurred_at":"2026-12-02T15:00:00Z","source":"returns","rma_id":"rma-77","node":"dc-east","lines":[{"line_id":"1","qty":1,"disposition":"restock"}]}',
]

ENVELOPE = {"schema": 1, "event_id": "ev-1", "occurred_at": "2026-11-27T09:00:00Z",
            "source": "erp"}

#: One valid event of every type, as JSON objects to vary.
VALID: dict[str, dict[str, Any]] = {
    "stock.snapshot": {"sku": "A", "node": "n", "on_hand": 0, "as_of": "2026-11-27T09:00:00Z"},
    "stock.adjusted": {"sku": "A", "node": "n", "delta": -1, "reason": "shrink"},
    "stock.policy": {"sku": "A", "node": "n", "safety_stock": 0},
    "order.created": {"order_id": "o", "channel": "web",
                      "lines": [{"line_id": "1", "sku": "A", "qty": 1, "node": "n"}]},
    "order.allocated": {"order_id": "o", "lines": [{"line_id": "1", "node": "n"}]},
    "order.cancelled": {"order_id": "o", "lines": [{"line_id": "1", "qty": 1}]},
    "order.shipped": {"order_id": "o", "shipment_id": "s", "node": "n",
                      "lines": [{"line_id": "1", "qty": 1}]},
    "return.authorized": {"rma_id": "r", "order_id": "o",
                          "lines": [{"line_id": "1", "sku": "A", "qty": 1}]},
    "return.received": {"rma_id": "r", "node": "n", "lines": [{"line_id": "1", "qty": 1}]},
    "return.inspected": {"rma_id": "r", "node": "n",
                         "lines": [{"line_id": "1", "qty": 1, "disposition": "damaged"}]},
}


def event(kind: str, **changes: Any) -> dict[str, Any]:
    """A valid event of type ``kind`` as a JSON object, with fields changed (None removes one)."""
    body = {"type": kind, **ENVELOPE, **json.loads(json.dumps(VALID[kind]))}
    for name, value in changes.items():
        if value is None:
            body.pop(name)
        else:
            body[name] = value
    return body


def raw(*bodies: dict[str, Any]) -> bytes:
    """One event, or several as a bulk array."""
    value: Any = bodies[0] if len(bodies) == 1 else list(bodies)
    return json.dumps(value).encode()


def rejected(value: bytes) -> tuple[str, str]:
    """The reason and message of a single-event message that must be rejected."""
    decoded = decode_message(value)
    assert decoded.events == []
    [rejection] = decoded.rejections
    assert rejection.raw == value
    assert rejection.index is None
    return rejection.reason, rejection.message


# --- the contract's examples ------------------------------------------------------------------


@pytest.mark.parametrize("value", EXAMPLES, ids=lambda v: json.loads(v)["type"])
def test_every_contract_example_decodes(value: bytes) -> None:
    decoded = decode_message(value)
    assert decoded.rejections == []
    [(index, decoded_event, kept)] = decoded.events
    assert (index, kept, decoded.bulk) == (None, value, False)
    assert msgspec.to_builtins(decoded_event) == {
        k: v for k, v in json.loads(value).items() if k != "type"
    } | {"type": json.loads(value)["type"]} | _defaults(json.loads(value))


def _defaults(body: dict[str, Any]) -> dict[str, Any]:
    """Optional fields the example left out, as the Struct shows them."""
    extra: dict[str, Any] = {}
    if "correlation_id" not in body:
        extra["correlation_id"] = None
    if body["type"] == "order.created":
        extra["lines"] = [{**line, "node": None} for line in body["lines"]]
        extra.setdefault("hold_id", body.get("hold_id"))
    return extra


def test_contract_examples_carry_their_values() -> None:
    snap, created, allocated, shipped, inspected = (
        decode_message(value).events[0][1] for value in EXAMPLES
    )
    assert isinstance(snap, StockSnapshot)
    assert (snap.sku, snap.node, snap.on_hand) == ("TSHIRT-RED-M", "dc-east", 120)
    assert instant_of(snap.as_of) == instant_of_datetime(datetime(2026, 11, 27, 9, 0, tzinfo=UTC))
    assert isinstance(created, OrderCreated)
    assert created.correlation_id == "ord-9912"
    assert created.lines[0].node is None
    assert isinstance(allocated, OrderAllocated)
    assert allocated.lines[0].node == "dc-east"
    assert isinstance(shipped, OrderShipped)
    assert (shipped.shipment_id, shipped.lines[0].qty) == ("551", 2)
    assert isinstance(inspected, ReturnInspected)
    assert inspected.lines[0].disposition == "restock"


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_event_type_decodes_and_round_trips(kind: str) -> None:
    [(_, decoded_event, _)] = decode_message(raw(event(kind))).events
    assert decode_message(msgspec.json.encode(decoded_event)).events[0][1] == decoded_event


# --- constraints ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["A", "a" * 64, "TSHIRT-RED-M", "dc.east_1:bin/07", "0"],
)
def test_identifier_from_the_charset_of_1_to_64_characters_is_accepted(value: str) -> None:
    for field in ("sku", "node"):
        assert decode_message(raw(event("stock.policy", **{field: value}))).rejections == []


@pytest.mark.parametrize(
    "value",
    ["", "a" * 65, "SKU 1", "SKU-1\n", "\nSKU-1", "SKU\n1", "SKÜ", "a+b", "a,b", "a\u00a0b"],
    ids=["empty", "65-chars", "space", "trailing-newline", "leading-newline", "inner-newline",
         "non-ascii", "plus", "comma", "nbsp"],
)
def test_identifier_out_of_charset_or_length_is_rejected(value: str) -> None:
    cases = [
        ("stock.snapshot", "sku", event("stock.snapshot", sku=value)),
        ("stock.adjusted", "node", event("stock.adjusted", node=value)),
        ("order.created", "channel", event("order.created", channel=value)),
        ("order.created", "lines[0].sku", event(
            "order.created", lines=[{"line_id": "1", "sku": value, "qty": 1}])),
        ("order.allocated", "order_id", event("order.allocated", order_id=value)),
        ("order.shipped", "lines[0].line_id", event(
            "order.shipped", lines=[{"line_id": value, "qty": 1}])),
        ("return.received", "rma_id", event("return.received", rma_id=value)),
    ]
    for _, field, body in cases:
        reason, message = rejected(raw(body))
        assert reason == Reason.INVALID_FIELD
        assert message.endswith(f"at `$.{field}`"), message


@pytest.mark.parametrize(("value", "ok"), [("x" * 128, True), ("x" * 129, False), ("", False)])
def test_event_id_is_1_to_128_characters(value: str, ok: bool) -> None:
    decoded = decode_message(raw(event("stock.policy", event_id=value)))
    assert (decoded.rejections == []) is ok
    if not ok:
        assert decoded.rejections[0].message.endswith("at `$.event_id`")


@pytest.mark.parametrize(
    ("kind", "field", "value", "ok"),
    [
        ("stock.snapshot", "on_hand", 0, True),
        ("stock.snapshot", "on_hand", -1, False),
        ("stock.snapshot", "on_hand", 1.5, False),
        ("stock.snapshot", "on_hand", "3", False),
        ("stock.policy", "safety_stock", 0, True),
        ("stock.policy", "safety_stock", -1, False),
        ("stock.adjusted", "delta", 0, False),
        ("stock.adjusted", "delta", -5, True),
        ("stock.adjusted", "delta", True, False),
        ("stock.adjusted", "reason", "theft", False),
        ("stock.adjusted", "reason", "transfer_in", True),
    ],
)
def test_stock_quantity_constraints(kind: str, field: str, value: Any, ok: bool) -> None:
    decoded = decode_message(raw(event(kind, **{field: value})))
    assert (decoded.rejections == []) is ok
    if not ok:
        assert decoded.rejections[0].reason == Reason.INVALID_FIELD
        assert decoded.rejections[0].message.endswith(f"at `$.{field}`")


@pytest.mark.parametrize(
    "kind",
    ["order.created", "order.cancelled", "order.shipped", "return.authorized",
     "return.received", "return.inspected"],
)
@pytest.mark.parametrize("qty", [0, -1])
def test_line_qty_must_be_positive(kind: str, qty: int) -> None:
    body = event(kind)
    body["lines"][0]["qty"] = qty
    reason, message = rejected(raw(body))
    assert reason == Reason.INVALID_FIELD
    assert message.endswith("at `$.lines[0].qty`")


@pytest.mark.parametrize("kind", [k for k in sorted(VALID) if "lines" in VALID[k]])
def test_lines_hold_1_to_500(kind: str) -> None:
    line = VALID[kind]["lines"][0]
    many = [{**line, "line_id": str(i)} for i in range(MAX_LINES + 1)]
    assert decode_message(raw(event(kind, lines=many[:MAX_LINES]))).rejections == []
    for lines in ([], many):
        reason, message = rejected(raw(event(kind, lines=lines)))
        assert (reason, message[-12:]) == (Reason.INVALID_FIELD, "at `$.lines`")


def test_cancel_without_lines_is_valid() -> None:
    assert decode_message(raw(event("order.cancelled", lines=None))).rejections == []


@pytest.mark.parametrize("kind", ["order.created", "return.authorized"])
def test_a_line_id_listed_twice_is_rejected(kind: str) -> None:
    line = VALID[kind]["lines"][0]
    reason, message = rejected(raw(event(kind, lines=[line, line])))
    assert reason == Reason.INVALID_FIELD
    assert "'1'" in message and "$.lines" in message


@pytest.mark.parametrize(("schema", "ok"), [(1, True), (2, False), (0, False), ("1", False)])
def test_schema_must_be_1(schema: Any, ok: bool) -> None:
    decoded = decode_message(raw(event("stock.policy", schema=schema)))
    assert (decoded.rejections == []) is ok
    if not ok:
        assert decoded.rejections[0].reason == Reason.UNSUPPORTED_SCHEMA
        assert "$.schema" in decoded.rejections[0].message


def test_missing_schema_is_rejected_naming_it() -> None:
    reason, message = rejected(raw(event("stock.policy", schema=None)))
    assert reason == Reason.UNSUPPORTED_SCHEMA
    assert "`schema`" in message


@pytest.mark.parametrize(
    ("kind", "field"), [("stock.policy", "occurred_at"), ("stock.snapshot", "as_of")]
)
@pytest.mark.parametrize("value", ["2026-11-27T09:00:00", "2026-11-27", "yesterday", 1764234000])
def test_timestamps_need_a_timezone(kind: str, field: str, value: Any) -> None:
    reason, message = rejected(raw(event(kind, **{field: value})))
    assert reason == Reason.INVALID_FIELD
    assert message.endswith(f"at `$.{field}`")


@pytest.mark.parametrize(
    "written", ["2026-11-27T11:00:00+02:00", "2026-11-27T09:00:00Z", "2026-11-27T09:00:00+00:00",
                "2026-11-27T04:30:00-04:30", "2026-11-27T09:00:00.000000Z"],
)
def test_timestamps_are_read_as_utc_instants(written: str) -> None:
    [(_, snap, _)] = decode_message(
        raw(event("stock.snapshot", occurred_at=written, as_of=written))
    ).events
    assert isinstance(snap, StockSnapshot)
    nine = instant_of_datetime(datetime(2026, 11, 27, 9, 0, tzinfo=UTC))
    for moment in (snap.occurred_at, snap.as_of):
        assert instant_of(moment) == nine
    # The event keeps the text as written: what it re-encodes to is what was sent.
    assert f'"occurred_at":"{written}"'.encode() in msgspec.json.encode(snap)


# --- clarifications (2026-12): times -------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "instant"),
    [
        ("2026-11-27T09:00:00.0000001Z", (1795770000, 100)),
        ("2026-11-27T09:00:00.0000003Z", (1795770000, 300)),
        ("2026-11-27T09:00:00.000000001Z", (1795770000, 1)),
        ("2026-11-27T09:00:00.1234567891234z", (1795770000, 123456789)),  # beyond ns: cut
        ("2026-11-27t11:00:00.5+02:00", (1795770000, 500_000_000)),
        ("2026-11-27T04:30:00-04:30", (1795770000, 0)),
        ("0001-01-01T00:00:00Z", (-62135596800, 0)),
        ("0000-12-31T23:00:00-01:00", (-62135596800, 0)),  # year 0001 once in UTC
        ("9999-12-31T23:59:59.999999999Z", (253402300799, 999_999_999)),
        ("2024-02-29T12:00:00Z", (1709208000, 0)),
    ],
)
def test_timestamps_keep_full_precision_over_the_years_0001_to_9999(
    written: str, instant: tuple[int, int]
) -> None:
    [(_, snap, _)] = decode_message(raw(event("stock.snapshot", as_of=written))).events
    assert instant_of(snap.as_of) == instant  # type: ignore[union-attr]


def test_a_tenth_of_a_microsecond_is_later() -> None:
    assert instant_of("2026-11-27T09:00:00.0000001Z") > instant_of("2026-11-27T09:00:00.0000000Z")


@pytest.mark.parametrize(("kind", "field"),
                         [("stock.policy", "occurred_at"), ("stock.snapshot", "as_of")])
@pytest.mark.parametrize(
    "written",
    [
        "2026-11-27T09:00:00+0530",         # offset without its colon
        "2026-11-27T09:00:00+05",
        "2026-11-27T09:00:00 Z",
        "2026-11-27 09:00:00Z",              # RFC 3339's T (or t) only
        "2026-11-27T09:00:00.Z",
        "2026-11-27T09:00Z",
        "2026-11-27T09:00:60Z",
        "2026-11-27T24:00:00Z",
        "2026-02-29T09:00:00Z",
        "2026-13-01T09:00:00Z",
        "2026-11-27T09:00:00+24:00",
        "2026-11-27T09:00:00Z\n",
        "\u0662026-11-27T09:00:00Z",        # a non-ASCII digit
        "9999-12-31T23:59:59-01:00",         # year 10000 in UTC
        "0001-01-01T00:00:00+00:01",         # year 0000 in UTC
        "0000-01-01T00:00:00Z",
    ],
)
def test_timestamps_outside_the_clarified_form_or_range_are_invalid(
    kind: str, field: str, written: str
) -> None:
    reason, message = rejected(raw(event(kind, **{field: written})))
    assert reason == Reason.INVALID_FIELD
    assert message.endswith(f"at `$.{field}`"), message


def test_an_out_of_range_instant_in_a_bulk_message_costs_only_its_event() -> None:
    # It raised OverflowError out of decoding, losing the good events of the message too.
    bad = event("stock.snapshot", event_id="bad", as_of="9999-12-31T23:59:59-01:00")
    decoded = decode_message(raw(event("stock.policy", event_id="a"), bad,
                                 event("stock.policy", event_id="b")))
    assert [e.event_id for _, e, _ in decoded.events] == ["a", "b"]
    assert [(r.index, r.reason) for r in decoded.rejections] == [(1, Reason.INVALID_FIELD)]


@pytest.mark.parametrize(
    "fraction", [".\u0663", ".", ".-1", ",5", ".5 ", ". 5", ".\u00b2", ".1_0", "5"]
)
def test_a_bad_fraction_is_invalid_also_when_its_second_was_read_before(fraction: str) -> None:
    # The short path (date and time already checked, fractions read before) checks the rest.
    assert instant_of("2026-11-27T09:00:00Z") == (1795770000, 0)
    assert instant_of("2026-11-27T09:00:00.5Z") == (1795770000, 500_000_000)
    with pytest.raises(ValueError):
        instant_of(f"2026-11-27T09:00:00{fraction}Z")
    with pytest.raises(ValueError):
        instant_of(f"2026-11-27T09:00:00{fraction}+01:00")


def test_a_fraction_read_before_means_the_same_in_any_second() -> None:
    firsts = [instant_of(f"2026-11-27T09:00:{s:02d}.25Z") for s in range(3)]
    again = [instant_of(f"2026-11-27T10:00:{s:02d}.25+01:00") for s in range(3)]
    assert firsts == again == [(1795770000 + s, 250_000_000) for s in range(3)]
    assert instant_of("2026-11-27T09:00:00.250Z") == instant_of("2026-11-27T09:00:00.25Z")
    assert instant_of("2026-11-27T09:00:00.0000000001Z") == (1795770000, 0)


def test_a_very_long_fraction_is_valid_and_not_cached_whole() -> None:
    written = "2026-11-27T09:00:00." + "1" * 100_000 + "Z"
    [(_, snap, _)] = decode_message(raw(event("stock.snapshot", as_of=written))).events
    assert instant_of(snap.as_of) == (1795770000, 111_111_111)  # type: ignore[union-attr]


# --- clarifications (2026-12): bytes ---------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        raw(event("stock.policy"))[:-1] + b', "ignored": "caf\xe9"}',         # Latin-1 byte
        raw(event("stock.policy"))[:-1] + b', "ignored": {"\xc3": 1}}',       # cut sequence
        raw(event("stock.policy"))[:-1] + b', "x": "\xed\xa0\x80"}',        # a surrogate
        raw(event("stock.policy"))[:-1] + b', "x": "\xf4\x90\x80\x80"}',   # beyond U+10FFFF
        b"[" + raw(event("stock.policy")) + b', {"a": "\xff"}]',
        b"\xff" + raw(event("stock.policy")),
    ],
    ids=["latin-1", "truncated", "surrogate", "too-large", "in-bulk", "leading"],
)
def test_a_value_not_utf8_anywhere_is_malformed_json_whole(value: bytes) -> None:
    decoded = decode_message(value)
    assert decoded.events == []
    assert [(r.reason, r.index, r.raw) for r in decoded.rejections] == [
        (Reason.MALFORMED_JSON, None, value)
    ]


def test_utf8_beyond_ascii_is_still_fine() -> None:
    body = event("stock.policy", note="café ✓ 🙂", correlation_id="ç-1")
    assert decode_message(json.dumps(body, ensure_ascii=False).encode()).rejections == []


def nested(depth: int) -> Any:
    """An unknown field's value nested ``depth`` levels deep (arrays and objects in turn)."""
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize(("depth", "ok"), [(MAX_DEPTH - 1, True), (MAX_DEPTH, False),
                                           (999, False), (100_000, False)])
def test_nesting_deeper_than_64_even_in_an_ignored_field_is_malformed_json(
    depth: int, ok: bool
) -> None:
    # The event object is one level: an unknown field nested `depth` deep makes depth + 1.
    inner = json.dumps(nested(depth)).encode() if depth < 500 else (
        b"[" * depth + b"1" + b"]" * depth
    )
    value = raw(event("stock.policy"))[:-1] + b', "x": ' + inner + b"}"
    decoded = decode_message(value)
    assert (decoded.rejections == []) is ok, decoded.rejections[:1]
    if not ok:
        assert [r.reason for r in decoded.rejections] == [Reason.MALFORMED_JSON]


@pytest.mark.parametrize("depth", [MAX_DEPTH, 5_000, 200_000])
def test_a_too_deep_event_in_a_bulk_message_costs_only_that_event_or_is_malformed(
    depth: int
) -> None:
    deep = raw(event("stock.policy", event_id="deep"))[:-1] + b', "x": ' + (
        b"[" * depth + b"]" * depth) + b"}"
    value = b"[" + b",".join([raw(event("stock.policy", event_id="a")), deep,
                              raw(event("stock.policy", event_id="b"))]) + b"]"
    decoded = decode_message(value)
    assert {r.reason for r in decoded.rejections} == {Reason.MALFORMED_JSON}
    if depth < 1000:  # split into its events: the others are applied
        assert [e.event_id for _, e, _ in decoded.events] == ["a", "b"]
        assert [r.index for r in decoded.rejections] == [1]


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 200_000,
        b"{" * 200_000,
        b'{"a":' * 100_000,
        b"[" * 70 + b"]" * 69,
        b'{"type":"stock.policy","x":' + b"[{" * 40 + b"}]" * 40 + b"}",
    ],
    ids=["open-arrays", "open-objects", "keys", "unbalanced", "mixed-81"],
)
def test_deep_or_unbalanced_nesting_never_raises(value: bytes) -> None:
    assert [r.reason for r in decode_message(value).rejections] == [Reason.MALFORMED_JSON]


@pytest.mark.parametrize(
    "tricky",
    [
        '"' + "[" * 100 + '"',                     # brackets inside a string do not nest
        r'"\\"',                                 # an escaped backslash, then the closing quote
        r'"\\\"' + "[" * 100 + '"',              # an escaped backslash and an escaped quote
        '"' + r'\u005b' * 70 + '"',              # escaped brackets
    ],
)
def test_brackets_and_escapes_inside_strings_do_not_count(tricky: str) -> None:
    many = "[" + ",".join(["[1]"] * 70) + "]"  # more than 64 brackets, depth 2
    value = raw(event("stock.policy"))[:-1] + f', "x": {tricky}, "y": {many}}}'.encode()
    assert decode_message(value).rejections == [], value[:200]


def test_unknown_fields_are_ignored() -> None:
    body = event("order.created", priority="high", meta={"a": [1, 2]})
    body["lines"][0]["gift_wrap"] = True
    [(_, created, _)] = decode_message(raw(body)).events
    assert created == decode_message(raw(event("order.created"))).events[0][1]


@pytest.mark.parametrize(
    "body",
    [{**ENVELOPE, "type": "stock.recount"}, {**ENVELOPE, "type": 7}, dict(ENVELOPE)],
    ids=["unknown", "not-a-string", "missing"],
)
def test_unknown_type_is_rejected(body: dict[str, Any]) -> None:
    reason, message = rejected(raw(body))
    assert reason == Reason.UNKNOWN_TYPE
    assert "type" in message


@pytest.mark.parametrize(
    ("kind", "missing"),
    [("stock.snapshot", "as_of"), ("order.shipped", "node"), ("stock.policy", "source"),
     ("return.received", "lines")],
)
def test_missing_field_is_rejected_naming_it(kind: str, missing: str) -> None:
    reason, message = rejected(raw(event(kind, **{missing: None})))
    assert reason == Reason.INVALID_FIELD
    assert f"`{missing}`" in message


@pytest.mark.parametrize(
    ("value", "reason"),
    [(b"", Reason.MALFORMED_JSON), (b"{", Reason.MALFORMED_JSON),
     (b'{"type": "stock.policy",}', Reason.MALFORMED_JSON), (b"\xff\xfe", Reason.MALFORMED_JSON),
     (b"42", Reason.NOT_AN_EVENT), (b'"stock.policy"', Reason.NOT_AN_EVENT),
     (b"null", Reason.NOT_AN_EVENT)],
)
def test_unparseable_or_non_object_message_is_rejected_whole(value: bytes, reason: str) -> None:
    assert rejected(value)[0] == reason


def test_absent_value_is_rejected() -> None:
    decoded = decode_message(None)
    assert [r.reason for r in decoded.rejections] == [Reason.MALFORMED_JSON]


# --- bulk messages --------------------------------------------------------------------------------


def test_bulk_message_rejects_each_invalid_event_alone_with_index_and_exact_bytes() -> None:
    elements = [
        raw(event("stock.snapshot", event_id="b0")),
        b'{ "type" : "stock.adjusted", "schema": 1, "event_id": "b1",\n  "delta": 0 }',
        raw(event("stock.policy", event_id="b2")),
        b"17",
        b'{"type":"stock.snapshot","schema":2}',
        raw(event("order.created", event_id="b5")),
    ]
    value = b"  [" + b" ,\n ".join(elements) + b"]\n"
    decoded = decode_message(value)
    assert decoded.bulk
    assert [(i, e.event_id, kept) for i, e, kept in decoded.events] == [
        (0, "b0", elements[0]), (2, "b2", elements[2]), (5, "b5", elements[5])
    ]
    assert [(r.index, r.reason, r.raw) for r in decoded.rejections] == [
        (1, Reason.INVALID_FIELD, elements[1]),
        (3, Reason.NOT_AN_EVENT, elements[3]),
        (4, Reason.UNSUPPORTED_SCHEMA, elements[4]),
    ]


def test_bulk_message_of_one_event_is_still_bulk() -> None:
    value = b"[" + EXAMPLES[0] + b"]"
    decoded = decode_message(value)
    assert decoded.bulk and decoded.rejections == []
    assert decoded.events == [(0, decode_message(EXAMPLES[0]).events[0][1], EXAMPLES[0])]


@pytest.mark.parametrize("count", [0, MAX_BULK + 1])
def test_bulk_message_of_0_or_more_than_10000_events_is_rejected(count: int) -> None:
    value = b"[" + b",".join([EXAMPLES[0]] * count) + b"]"
    decoded = decode_message(value)
    assert decoded.events == []
    assert [(r.reason, r.index, r.raw) for r in decoded.rejections] == [
        (Reason.BULK_SIZE, None, value)
    ]
    assert str(count) in decoded.rejections[0].message


def test_bulk_message_of_10000_events_is_accepted() -> None:
    decoded = decode_message(b"[" + b",".join([EXAMPLES[0]] * MAX_BULK) + b"]")
    assert (len(decoded.events), decoded.rejections) == (MAX_BULK, [])
    assert decoded.events[-1][0] == MAX_BULK - 1


@pytest.mark.parametrize(
    "value", [b"[" + EXAMPLES[0], b"[" + EXAMPLES[0] + b",]", b"[1, {]", b"[] []"],
)
def test_malformed_bulk_message_is_rejected_whole(value: bytes) -> None:
    decoded = decode_message(value)
    assert decoded.events == []
    assert [(r.reason, r.index, r.raw) for r in decoded.rejections] == [
        (Reason.MALFORMED_JSON, None, value)
    ]


def test_errors_name_the_field_and_show_the_value() -> None:
    body = event("order.created")
    body["lines"][0]["sku"] = "bad sku"
    message = rejected(raw(body))[1]
    assert "`$.lines[0].sku`" in message
    assert "regex" in message
    body = event("stock.adjusted", delta=0)
    assert "`$.delta`" in rejected(raw(body))[1]


def test_correlation_id_is_optional_and_kept() -> None:
    with_id = decode_message(raw(event("stock.policy", correlation_id="c-1"))).events[0][1]
    without = decode_message(raw(event("stock.policy"))).events[0][1]
    assert (with_id.correlation_id, without.correlation_id) == ("c-1", None)


def test_json_schema_is_generated_for_one_event_or_a_bulk_array() -> None:
    schema = event_schema()
    single, bulk = schema["anyOf"]  # type: ignore[misc]
    assert bulk == {"type": "array", "items": single, "minItems": 1, "maxItems": MAX_BULK}
    tags = {d["properties"]["type"]["enum"][0] for d in schema["$defs"].values()  # type: ignore[attr-defined]
            if "type" in d.get("properties", {})}
    assert tags == set(VALID)



# --- fields the contract leaves free -----------------------------------------------------------


@pytest.mark.parametrize("value", ["SHP 551/2026#14", "x" * 200, "ÄÖ-7"])
def test_shipment_id_is_not_an_identifier_and_takes_any_string(value: str) -> None:
    # The contract's identifier rule names sku, node, order_id, line_id, rma_id and channel
    # only; a WMS's shipment number must not cost the stock movement it reports.
    decoded = decode_message(raw(event("order.shipped", shipment_id=value)))
    assert decoded.rejections == []
    assert decoded.events[0][1].shipment_id == value  # type: ignore[union-attr]


@pytest.mark.parametrize(("field", "value"), [("source", "wms-" + "e" * 300),
                                              ("correlation_id", "trace-" + "0" * 500)])
def test_source_and_correlation_id_have_no_length_limit(field: str, value: str) -> None:
    decoded = decode_message(raw(event("stock.adjusted", **{field: value})))
    assert decoded.rejections == []
    assert getattr(decoded.events[0][1], field) == value


# --- quantities out of range --------------------------------------------------------------------


QUANTITIES = [
    ("stock.snapshot", "on_hand", 0), ("stock.policy", "safety_stock", 0),
    ("stock.adjusted", "delta", 1), ("stock.adjusted", "delta", -1),
]


@pytest.mark.parametrize(("kind", "field", "sign"), QUANTITIES)
def test_quantities_up_to_the_maximum_are_accepted(kind: str, field: str, sign: int) -> None:
    value = MAX_QUANTITY * (sign or 1)
    assert decode_message(raw(event(kind, **{field: value}))).rejections == []


@pytest.mark.parametrize(("kind", "field", "sign"), QUANTITIES)
@pytest.mark.parametrize("beyond", [1, 2**64, 10**30])
def test_quantity_beyond_the_maximum_is_out_of_range(
    kind: str, field: str, sign: int, beyond: int
) -> None:
    # A number no store can hold must be dead-lettered, not fail the batch when encoded.
    value = (MAX_QUANTITY + beyond) * (sign or 1)
    reason, message = rejected(raw(event(kind, **{field: value})))
    assert reason == Reason.INVALID_FIELD
    assert message.endswith(f"at `$.{field}`")


@pytest.mark.parametrize("kind", ["order.created", "order.cancelled", "order.shipped",
                                  "return.authorized", "return.received", "return.inspected"])
def test_line_qty_beyond_the_maximum_is_out_of_range(kind: str) -> None:
    body = event(kind)
    body["lines"][0]["qty"] = MAX_QUANTITY
    assert decode_message(raw(body)).rejections == []
    body["lines"][0]["qty"] = MAX_QUANTITY + 1
    assert rejected(raw(body))[1].endswith("at `$.lines[0].qty`")


@pytest.mark.parametrize(
    "tail",
    ["+0530", ".Z", ".+05:30", "Z\n", " Z", "+05:30Z", ".1 Z", ".\u0661Z", "5+05:30", "", "+5:30"],
)
def test_a_date_and_time_seen_before_does_not_let_a_bad_tail_through(tail: str) -> None:
    # Timestamps whose first 19 characters were valid before take a short path: it must
    # reject whatever the full check rejects.
    for seen in ("2026-11-27T09:00:00Z", "2026-11-27T09:00:00+05:30"):
        instant_of(seen)
    with pytest.raises(ValueError):
        instant_of("2026-11-27T09:00:00" + tail)
