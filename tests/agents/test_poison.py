"""No input stops the translator: oversized dead letters, oversized effects, unexpected errors.

Translators run over memory here (an outbox that holds messages to a broker's
size limit, the memory store); ``tests/e2e/test_poison.py`` sends the same
inputs through the real broker and worker.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
from collections.abc import Sequence

import msgspec
import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from stocksync.agents import stages
from stocksync.agents.dlq import DeadLetterOut, dead_letter, record_size
from stocksync.agents.stages import (
    Applier,
    MessageTooLarge,
    SourceMessage,
    Translator,
    effects_messages,
    retrying,
)
from stocksync.agents.streams import _send_all
from stocksync.codecs.dlq import HEAD_BYTES, UNOWNED, dead_letter_decoder, owner_of
from stocksync.codecs.effects import Snapshot, batch_decoder
from stocksync.codecs.messages import Reason
from stocksync.readmodel import core
from stocksync.store import MemoryStore
from tests.agents.events import ev

__all__: list[str] = []

DAY_MS = 86_400_000
LIMIT = 1_000_000
TOPOLOGY = core.Topology(channels=(core.ChannelSpec(name="web", nodes=("dc-east",)),))


def letter(raw: bytes, **fields: object) -> DeadLetterOut:
    """A dead letter of ``raw`` built by the worker's builder."""
    options: dict[str, object] = {
        "reason": "malformed_json", "message": "not valid JSON", "topic": "p.stock.v1",
        "partition": 2, "offset": 41, "index": None, "key": b"SKU-1",
        "correlation_id": "corr-1", "raw": raw, "now_ms": 1_764_234_000_000,
        "max_bytes": LIMIT,
    }
    options.update(fields)
    return dead_letter(**options)  # type: ignore[arg-type]


# --- dead letters that would not fit ---------------------------------------------------


def test_a_small_dead_letter_is_whole_and_unchanged() -> None:
    """Below the limit the record is what it always was: no new field appears."""
    out = letter(b"{oops")
    assert not out.truncated
    assert json.loads(out.value) == {
        "reason": "malformed_json", "message": "not valid JSON", "topic": "p.stock.v1",
        "partition": 2, "offset": 41, "key": "SKU-1", "correlation_id": "corr-1",
        "rejected_at": "2025-11-27T09:00:00.000Z", "event_text": "{oops",
    }


def test_the_owner_is_the_last_field_and_a_header_and_old_records_read_unowned() -> None:
    """The owner only grows the record at its end; a record without one reads as unowned."""
    before = letter(b"{oops").value
    out = letter(b"{oops", owner="warehouse")
    assert out.value == before[:-1] + b',"owner":"warehouse"}'
    assert out.headers[-1] == ("owner", b"warehouse")
    assert owner_of(dead_letter_decoder.decode(out.value)) == "warehouse"
    assert owner_of(dead_letter_decoder.decode(before)) == UNOWNED == "unowned"
    cut = letter(b"A" * 1_048_576, owner="erp")
    assert cut.truncated and dead_letter_decoder.decode(cut.value).owner == "erp"
    assert ("owner", b"erp") in cut.headers


@pytest.mark.parametrize(
    ("raw", "head_field"),
    [
        (b"A" * 1_048_576, "event_text"),  # 1 MiB of A
        (b"\x01" * 900_000, "event_b64"),  # 5.4 MB once JSON-escaped; base64 is smaller
        (random.Random(7).randbytes(10_000_000), "event_b64"),  # 10 MB of garbage
    ],
    ids=["1MiB-of-A", "900KB-of-x01", "10MB-garbage"],
)
def test_a_dead_letter_too_large_is_truncated_to_fit(raw: bytes, head_field: str) -> None:
    out = letter(raw)
    assert out.truncated
    assert record_size(out.key, out.value, out.headers) <= LIMIT
    record = dead_letter_decoder.decode(out.value)
    assert record.truncated
    assert (record.reason, record.topic, record.partition, record.offset) == (
        "malformed_json", "p.stock.v1", 2, 41)
    assert (record.key, record.correlation_id) == ("SKU-1", "corr-1")
    assert record.event_length == len(raw)
    assert record.event_sha256 == hashlib.sha256(raw).hexdigest()
    assert isinstance(record.event, msgspec.UnsetType)
    if head_field == "event_text":
        assert record.event_text == raw[:HEAD_BYTES].decode()
    else:
        assert record.event_b64 is not None
        assert base64.b64decode(record.event_b64) == raw[:HEAD_BYTES]


def test_a_truncated_head_never_cuts_a_character() -> None:
    raw = ("é" * 600_000).encode()  # 2 bytes each: 64 KiB falls on a boundary or not
    record = dead_letter_decoder.decode(letter(b"x" + raw).value)
    assert record.event_text is not None
    assert raw.startswith(record.event_text[1:].encode())
    assert len(record.event_text.encode()) >= HEAD_BYTES - 3


def test_long_key_correlation_id_and_message_are_bounded() -> None:
    """A record always fits: huge key, correlation id and message are cut as well."""
    out = letter(
        b"x" * 10, key=b"k" * 600_000, correlation_id="c" * 600_000, message="m" * 600_000
    )
    assert out.truncated
    assert record_size(out.key, out.value, out.headers) <= LIMIT
    record = dead_letter_decoder.decode(out.value)
    assert record.key == "k" * 1024 and out.key == b"k" * 1024
    assert record.correlation_id == "c" * 1024
    assert dict(out.headers)["correlation_id"] == b"c" * 1024
    assert record.message == "m" * 1024
    assert record.event_text == "x" * 10


def test_a_small_limit_keeps_a_shorter_head() -> None:
    out = letter(b"\x00" * 200_000, max_bytes=40_000)
    assert record_size(out.key, out.value, out.headers) <= 40_000
    record = dead_letter_decoder.decode(out.value)
    assert record.event_b64 is not None
    assert 0 < len(base64.b64decode(record.event_b64)) < HEAD_BYTES


def test_a_bulk_of_10001_events_is_one_truncated_bulk_size_letter() -> None:
    events = [ev("stock.adjusted", f"a{i}", sku="A", node="dc-east", delta=1,
                 reason="receipt") for i in range(10_001)]
    raw = msgspec.json.encode(events)
    assert len(raw) > 1_500_000
    rig = Rig()
    rig.feed("stock", [rig.message("stock", "export", raw), rig.adjust("A", 4)])
    (record,) = rig.letters()
    assert (record.reason, record.truncated, record.event_length) == (
        Reason.BULK_SIZE, True, len(raw))
    assert rig.available("A") == 4


# --- effects that would not fit --------------------------------------------------------


def snapshots(n: int, sku: str = "A") -> list[Snapshot]:
    return [Snapshot(sku=sku, src="stock/0", ofs=7, idx=i, seq=0, eid=("erp", f"s{i}"),
                     at=(i, 0), produced=0, cid=None, node="dc-east", on_hand=i, as_of=(i, 0))
            for i in range(n)]


def test_effects_are_split_into_messages_under_the_limit_in_order() -> None:
    effects = snapshots(10_000)
    payloads = effects_messages(effects, 100_000)
    assert len(payloads) > 3
    assert all(len(p) <= 100_000 for p in payloads)
    assert [e for p in payloads for e in batch_decoder.decode(p).effects] == effects
    assert len(effects_messages(effects[:10], 100_000)) == 1


def test_a_valid_500_line_order_with_a_64kib_correlation_id_applies() -> None:
    rig = Rig()
    rig.feed("stock", [rig.message("stock", "A", ev(
        "stock.snapshot", "s1", sku="A", node="dc-east", on_hand=10_000,
        as_of="2026-11-27T08:00:00Z"))])
    lines = [{"line_id": str(i), "sku": "A", "qty": 3, "node": "dc-east"} for i in range(500)]
    order = ev("order.created", "o1", order_id="big", channel="web", lines=lines,
               correlation_id="c" * 65_536)
    rig.feed("orders", [rig.message("orders", "big", order)])
    assert rig.letters() == []
    assert rig.available("A") == 10_000 - 1_500
    assert all(len(p) <= LIMIT for _, p in rig.sent)
    cids = {e.cid for _, p in rig.sent for e in batch_decoder.decode(p).effects}
    assert cids == {None, "c" * 1024}  # the snapshot has none; effects carry 1,024 chars


def test_a_bulk_of_10000_snapshots_of_one_sku_goes_through_in_order() -> None:
    rig = Rig(partitions=1)
    events = [ev("stock.snapshot", f"s{i}", sku="A", node="dc-east", on_hand=i,
                 as_of=f"2026-11-27T08:{i // 600:02d}:{i // 10 % 60:02d}.{i % 10}Z",
                 source="erp-" + "x" * 40) for i in range(10_000)]
    raw = msgspec.json.encode(events)
    rig.translators["stock"].chunk_events = 20_000
    rig.feed("stock", [rig.message("stock", "export", raw)])
    assert rig.letters() == []
    assert len(rig.rounds) > 1  # split, one message per round on the only partition
    assert all(len(r) == 1 and len(p) <= LIMIT for r in rig.rounds for p in r.values())
    assert rig.available("A") == 9_999  # the latest as_of wins: every effect arrived


# --- the broker refuses what the translator thought would fit ------------------------------


def test_refused_messages_are_sent_again_smaller() -> None:
    """The broker takes less than the translator was told: it learns and sends smaller."""
    rig = Rig(partitions=1, broker_limit=300_000)
    events = [ev("stock.snapshot", f"s{i}", sku="A", node="dc-east", on_hand=i,
                 as_of=f"2026-11-27T08:{i // 600:02d}:{i // 10 % 60:02d}.{i % 10}Z")
              for i in range(10_000)]
    rig.translators["stock"].chunk_events = 20_000
    rig.feed("stock", [
        rig.message("stock", "export", msgspec.json.encode(events)),
        rig.message("stock", "A", b"A" * 500_000),
    ])
    assert rig.outbox.refusals >= 2
    assert rig.translators["stock"].max_message_bytes <= 300_000
    (record,) = rig.letters()
    assert record.truncated and record.event_length == 500_000
    assert rig.available("A") == 9_999


def test_an_event_whose_effect_cannot_fit_alone_is_dead_lettered() -> None:
    """A stock event with a 300 KB ``source`` on a broker that takes 200 KB: its effect
    (which carries ``source``) can never be sent, so the event is dead-lettered."""
    rig = Rig(broker_limit=200_000)
    for translator in rig.translators.values():
        translator.max_message_bytes = 200_000
    huge = ev("stock.adjusted", "h1", sku="A", node="dc-east", delta=9, reason="receipt",
              source="s" * 300_000)
    rig.feed("stock", [rig.message("stock", "A", huge), rig.adjust("A", 2)])
    (record,) = rig.letters()
    assert record.reason == "internal_error" and record.truncated
    assert "one of its effects is" in record.message
    assert rig.available("A") == 2


def test_a_broker_refusing_everything_is_retried_with_backoff_not_spun() -> None:
    rig = Rig(broker_limit=10)
    translator = rig.translators["stock"]

    async def main() -> None:
        await asyncio.wait_for(translator.process([rig.adjust("A", 1)]), 1.0)

    with pytest.raises(TimeoutError):
        asyncio.run(main())
    assert translator.max_message_bytes == 16 * 1024
    assert 5 <= rig.outbox.refusals < 40  # a busy loop would have made thousands


def test_retrying_retries_transient_send_errors_and_stops_on_size() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ProducerSendError("Error while sending") from KafkaTimeoutError()
        return "sent"

    async def too_big() -> None:
        raise ProducerSendError("Error while sending") from MessageSizeTooLargeError()

    async def main() -> None:
        assert await retrying(flaky, what="x", metrics=None, stage="t", first_delay=0) == "sent"
        with pytest.raises(MessageTooLarge):
            await retrying(too_big, what="x", metrics=None, stage="t", first_delay=0)

    asyncio.run(main())
    assert len(calls) == 3


def test_the_faust_outbox_reports_which_sends_were_refused() -> None:
    loop_done: list[str] = []

    def send(outcome: str) -> object:
        async def start() -> asyncio.Future[None]:
            if outcome == "refused-now":
                raise ProducerSendError("Error while sending") from MessageSizeTooLargeError()
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if outcome == "refused-later":
                fut.set_exception(MessageSizeTooLargeError())
            else:
                fut.set_result(None)
                loop_done.append(outcome)
            return fut
        return start

    async def main() -> MessageTooLarge:
        with pytest.raises(MessageTooLarge) as caught:
            await _send_all([
                (10, send("ok-1")), (2_000, send("refused-now")), (20, send("ok-2")),
                (1_500, send("refused-later")),
            ])  # type: ignore[list-item]
        return caught.value

    refused = asyncio.run(main())
    assert refused.refused == [1, 3] and refused.size == 1_500
    assert loop_done == ["ok-1", "ok-2"]


# --- unexpected exceptions cost one event ------------------------------------------------


def test_a_crash_while_decoding_dead_letters_the_message_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = stages.decode_message

    def decode(value: bytes | None) -> object:
        if value == b'{"boom":1}':
            raise RecursionError("maximum recursion depth exceeded\nwhile decoding")
        return real(value)

    monkeypatch.setattr(stages, "decode_message", decode)
    rig = Rig()
    rig.feed("stock", [rig.adjust("A", 2), rig.message("stock", "A", b'{"boom":1}'),
                       rig.adjust("A", 3)])
    (record,) = rig.letters()
    assert record.reason == Reason.INTERNAL_ERROR == "internal_error"
    assert record.message == (
        "decoding it raised an unexpected error: RecursionError: maximum recursion depth "
        "exceeded while decoding")
    assert record.event_text == '{"boom":1}' or msgspec.json.decode(record.event) == {"boom": 1}
    assert rig.available("A") == 5


def test_a_crash_while_translating_dead_letters_that_event_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = core.translate

    def translate(event: object, *args: object) -> object:
        if getattr(event, "event_id", "") == "bad":
            raise OverflowError("date value out of range")
        return real(event, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(core, "translate", translate)
    rig = Rig()
    bulk = [ev("stock.adjusted", eid, sku="A", node="dc-east", delta=d, reason="receipt",
               correlation_id=f"own-{eid}")
            for eid, d in (("a", 2), ("bad", 50), ("b", 3))]
    message = msgspec.structs.replace(rig.message("stock", "x", bulk), correlation_id="hdr-1")
    rig.feed("stock", [message])
    (record,) = rig.letters()
    assert (record.reason, record.index) == ("internal_error", 1)
    assert record.message == (
        "translating it raised an unexpected error: OverflowError: date value out of range")
    assert record.correlation_id == "own-bad"  # the event's own id wins over the header's
    assert rig.available("A") == 5


def test_a_crash_while_checking_dead_letters_that_event_only_with_its_own_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = core.check_placement

    def check_placement(event: object, *args: object) -> object:
        if getattr(event, "event_id", "").startswith("bad"):
            raise KeyError("placement")
        return real(event, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(core, "check_placement", check_placement)
    rig = Rig()
    own = {"correlation_id": "own-bad"}
    bulk = [ev("stock.adjusted", eid, sku="A", node="dc-east", delta=d, reason="receipt",
               **(own if eid == "bad-own" else {}))
            for eid, d in (("a", 2), ("bad-own", 50), ("b", 3), ("bad-none", 7))]
    message = msgspec.structs.replace(rig.message("stock", "x", bulk), correlation_id="hdr-1")
    rig.feed("stock", [message])
    first, second = rig.letters()
    assert (first.reason, first.index, second.index) == ("internal_error", 1, 3)
    assert first.message == "checking it raised an unexpected error: KeyError: 'placement'"
    assert first.correlation_id == "own-bad"  # the event's own id wins over the header's
    assert second.correlation_id == "hdr-1"  # else the header's, as the contract says
    assert rig.available("A") == 5


def test_deep_nesting_and_far_times_cost_their_message_only() -> None:
    """The real inputs of the issue that raised out of decoding (RecursionError, OverflowError):
    dead-lettered whatever the decoder makes of them, and the next message applies."""
    rig = Rig()
    nested = b'{"x":' * 1_000 + b"1" + b"}" * 1_000
    far = msgspec.json.encode(ev("stock.adjusted", "far", sku="A", node="dc-east", delta=1,
                                 reason="receipt", occurred_at="9999-12-31T23:59:59-01:00"))
    rig.feed("stock", [rig.message("stock", "A", nested), rig.message("stock", "A", far),
                       rig.adjust("A", 6)])
    reasons = [letter.reason for letter in rig.letters()]
    assert len(reasons) == 2
    assert set(reasons) <= {"internal_error", "malformed_json", "invalid_field"}
    assert rig.available("A") == 6


# --- the rig ------------------------------------------------------------------------------


class SizedOutbox:
    """Holds what is sent, refusing (like a broker) messages over ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rounds: list[dict[int, bytes]] = []
        self.letters: list[DeadLetterOut] = []
        self.refusals = 0

    async def send_effects(self, batches: dict[int, bytes]) -> None:
        refused = [n for n, p in enumerate(batches.values()) if len(p) > self.limit]
        self.rounds.append({p: b for p, b in batches.items() if len(b) <= self.limit})
        self._refuse(refused, [len(p) for p in batches.values()])

    async def send_dead_letters(self, letters: Sequence[DeadLetterOut]) -> None:
        sizes = [record_size(x.key, x.value, x.headers) for x in letters]
        refused = [n for n, size in enumerate(sizes) if size > self.limit]
        self.letters += [x for n, x in enumerate(letters) if n not in refused]
        self._refuse(refused, sizes)

    def _refuse(self, refused: list[int], sizes: list[int]) -> None:
        if refused:
            self.refusals += 1
            raise MessageTooLarge(min(sizes[n] for n in refused), refused)


class Rig:
    """Translators and an applier over memory, with a broker limit on what is sent."""

    def __init__(self, *, partitions: int = 4, broker_limit: int = LIMIT) -> None:
        self.outbox = SizedOutbox(broker_limit)
        self.store = asyncio.run(MemoryStore.fresh(TOPOLOGY))
        self.offsets = {"stock": 0, "orders": 0, "returns": 0}
        self.translators = {
            kind: Translator(
                kind=kind, effects_partitions=partitions, outbox=self.outbox,
                store=None if kind == "stock" else self.store, window_ms=DAY_MS,
                clock=lambda: 1_000, max_message_bytes=LIMIT,
            )
            for kind in self.offsets
        }
        self.applier = Applier(store=self.store, topology=TOPOLOGY, window_ms=DAY_MS,
                               clock=lambda: 2_000)
        self.sent: list[tuple[int, bytes]] = []
        self.rounds: list[dict[int, bytes]] = []

    def message(self, kind: str, key: str, value: object) -> SourceMessage:
        offset = self.offsets[kind]
        self.offsets[kind] += 1
        raw = value if isinstance(value, bytes) else msgspec.json.encode(value)
        return SourceMessage(topic=f"p.{kind}.v1", partition=0, offset=offset,
                             key=key.encode(), value=raw)

    def adjust(self, sku: str, delta: int) -> SourceMessage:
        offset = self.offsets["stock"]
        return self.message("stock", sku, ev("stock.adjusted", f"adj-{offset}", sku=sku,
                                             node="dc-east", delta=delta, reason="receipt"))

    def feed(self, kind: str, messages: list[SourceMessage]) -> None:
        async def main() -> None:
            await self.translators[kind].process(messages)
            rounds = [r for r in self.outbox.rounds if r]
            self.outbox.rounds.clear()
            self.rounds += rounds
            payloads = [(p, b) for r in rounds for p, b in r.items()]
            self.sent += payloads
            # Each round's messages reach the applier in the order they were sent.
            for r in rounds:
                await self.applier.process(list(r.values()))

        asyncio.run(main())

    def letters(self) -> list[msgspec.Struct]:
        return [dead_letter_decoder.decode(x.value) for x in self.outbox.letters]

    def available(self, sku: str) -> int:
        served = self.store.served_of(sku)
        assert served is not None, f"{sku} was never written"
        return served.channels[0].available
