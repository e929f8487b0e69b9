"""``stocksync dlq list`` and ``dlq replay``: read the dead-letter topic, send events back.

A replay sends a dead-lettered event's original bytes to its source topic
under its original key (an event of a bulk message goes alone, as a
single-event message), with a ``correlation_id`` header when one is known and
a ``replayed_from`` header naming the dead-letter record. Replaying is safe:
an event that was invalid and now is valid (its order arrived since, say) is
applied once; an event that was already applied is skipped by its
(``source``, ``event_id``). A truncated record (its message was larger than
the broker takes) is never replayed: it holds only the head of the value;
the replay says so and where the original is.

Every record names the team that owns it (``owner``, see
:mod:`stocksync.agents.owners`); records written before owners existed are
``unowned``. Both commands choose by owner as they do by reason.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Final, TextIO

import msgspec

from stocksync.agents.topics import topic_names
from stocksync.codecs.dlq import DeadLetter, dead_letter_decoder, owner_of
from stocksync.codecs.events import Event
from stocksync.config.settings import Settings
from stocksync.ops.access import OperateError, audit, open_producer, read_topics
from stocksync.readmodel import core

__all__ = [
    "Letter",
    "Replay",
    "format_body",
    "format_letter",
    "list_letters",
    "read_letters",
    "replay_letters",
]

log = logging.getLogger("stocksync.operate")

_event_decoder = msgspec.json.Decoder(Event)
#: Sends awaited together before the next progress line.
_SEND_WINDOW: Final = 500


class Letter(msgspec.Struct, frozen=True):
    """A dead-letter record with where it sits on the dead-letter topic."""

    record: DeadLetter
    dlq_partition: int
    dlq_offset: int
    #: The dead-letter message's key: the source message's key, byte for byte.
    kafka_key: bytes | None

    @property
    def where(self) -> str:
        """Where the rejected event was: ``topic[partition]@offset`` and ``#index`` in a bulk."""
        r = self.record
        index = f"#{r.index}" if r.index is not None else ""
        return f"{r.topic}[{r.partition}]@{r.offset}{index}"

    def event_bytes(self) -> bytes:
        """The rejected event exactly as received."""
        r = self.record
        if not isinstance(r.event, msgspec.UnsetType):
            return bytes(r.event)
        if r.event_text is not None:
            return r.event_text.encode("utf-8")
        if r.event_b64 is not None:
            return base64.b64decode(r.event_b64)
        return b""


class Replay(msgspec.Struct, frozen=True):
    """One message a replay sends."""

    letter: Letter
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    #: Why the key differs from the original one, when it does.
    rekeyed: str | None = None


def _rejected_at(letter: Letter) -> datetime | None:
    try:
        return datetime.fromisoformat(letter.record.rejected_at)
    except ValueError:
        return None


async def read_letters(
    settings: Settings,
    *,
    reason: str | None = None,
    since: datetime | None = None,
    owner: str | None = None,
) -> tuple[list[Letter], int]:
    """Dead letters matching the filters, oldest first, and the count of unreadable records."""
    dlq = topic_names(settings).dlq
    letters: list[Letter] = []
    unreadable = 0
    async for records, _progress in read_topics(settings, [dlq]):
        for rec in records:
            try:
                record = dead_letter_decoder.decode(rec.value or b"")
            except msgspec.DecodeError as exc:
                unreadable += 1
                log.warning("skipping an unreadable dead-letter record at %s[%d]@%d: %s",
                            rec.topic, rec.partition, rec.offset, exc)
                continue
            letter = Letter(record, rec.partition, rec.offset, rec.key)
            if reason is not None and record.reason != reason:
                continue
            if owner is not None and owner_of(record) != owner:
                continue
            if since is not None:
                at = _rejected_at(letter)
                if at is None or at < since:
                    continue
            letters.append(letter)
    letters.sort(key=lambda x: (x.record.rejected_at, x.dlq_partition, x.dlq_offset))
    return letters, unreadable


def _clean(text: str | None) -> str:
    """One-line, printable text; ``-`` for nothing."""
    if not text:
        return "-"
    return "".join(c if c.isprintable() else "?" for c in text)


def _escaped(text: str) -> str:
    """``text`` on one line: what is not printable is shown as its escape (``\\n``, ``\\x1b``)."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def format_letter(letter: Letter) -> str:
    """One line: time, reason, owner, where, key, correlation id, message."""
    r = letter.record
    fields = [
        r.rejected_at,
        _clean(r.reason),
        f"owner={_clean(owner_of(r))}",
        letter.where,
        f"key={_clean(r.key)}",
        f"cid={_clean(r.correlation_id)}",
        _clean(r.message),
    ]
    if r.truncated:
        fields.append(f"[truncated: {r.event_length} bytes, sha256 {_clean(r.event_sha256)}]")
    return "  ".join(fields)


def format_body(letter: Letter) -> str:
    """The rejected event's body on one indented line, saying what form it is in.

    Valid JSON is shown on one line (its line breaks and indentation dropped,
    nothing else changed); other text with its unprintable characters escaped;
    bytes that are not UTF-8 as base64. A truncated record says how much of the value it kept.
    """
    r = letter.record
    if r.truncated:
        if r.event_text is not None:
            head, kept, form = _escaped(r.event_text), len(r.event_text.encode()), "as text"
        elif r.event_b64 is not None:
            try:
                kept = len(base64.b64decode(r.event_b64))
            except (binascii.Error, ValueError):
                kept = 0
            head, form = r.event_b64, "base64"
        else:
            head, kept, form = "", 0, "none kept"
        return (
            f"    body (truncated: the first {kept} of {r.event_length} bytes, {form};"
            f" sha256 {_clean(r.event_sha256)}): {head}"
        )
    if not isinstance(r.event, msgspec.UnsetType):
        try:
            compact = msgspec.json.format(bytes(r.event), indent=0).decode("utf-8")
        except (msgspec.DecodeError, UnicodeDecodeError):
            compact = bytes(r.event).decode("utf-8", "replace")
        return f"    body: {_escaped(compact)}"
    if r.event_text is not None:
        return f"    body (not JSON): {_escaped(r.event_text)}"
    if r.event_b64 is not None:
        return f"    body (not UTF-8, base64): {r.event_b64}"
    return "    body: -"


async def list_letters(
    settings: Settings,
    out: TextIO,
    *,
    reason: str | None,
    limit: int | None,
    owner: str | None = None,
    show_body: bool = False,
) -> int:
    """Print dead letters, oldest first (with ``limit``, the newest ``limit``); return the count.

    With ``show_body`` each line is followed by the event's body (:func:`format_body`).
    """
    letters, unreadable = await read_letters(settings, reason=reason, owner=owner)
    shown = letters[-limit:] if limit is not None else letters
    for letter in shown:
        print(format_letter(letter), file=out)
        if show_body:
            print(format_body(letter), file=out)
    what = f" with reason {reason!r}" if reason else ""
    what += f" owned by {owner!r}" if owner else ""
    more = f" (showing the newest {len(shown)})" if len(shown) < len(letters) else ""
    bad = f"; {unreadable} unreadable record(s) skipped" if unreadable else ""
    print(f"{len(letters)} dead-lettered event(s){what}{more}{bad}", file=out)
    return len(shown)


def _plan(letter: Letter, sources: tuple[str, ...]) -> Replay | str:
    """The message that replays ``letter``, or why it cannot be replayed."""
    r = letter.record
    if r.topic not in sources:
        return f"its topic {r.topic!r} is not a source topic of this configuration"
    if r.truncated:
        return (
            f"the record is truncated (the value was {r.event_length} bytes, more than the "
            "broker takes; only its first 64 KiB and its SHA-256 were kept), so it cannot be "
            f"replayed whole: take the original from {letter.where} while the topic still "
            "holds it, or have its producer send it again"
        )
    try:
        value = letter.event_bytes()
    except (binascii.Error, ValueError):
        return "its event_b64 is not valid base64"
    if not value:
        return "the record holds no event"
    key = letter.kafka_key if letter.kafka_key is not None else (
        r.key.encode("utf-8") if r.key is not None else None
    )
    rekeyed = None
    try:
        event = _event_decoder.decode(value)
    except msgspec.DecodeError:
        event = None
    if event is not None:
        own = core.key_of(event)
        if own is not None and key != own.encode():
            # An order or return event must travel under its own id's key, so it
            # reaches the partition that holds its order's or RMA's state.
            rekeyed = f"key {key!r} -> {own!r} (the event's own id)"
            key = own.encode()
    headers = [("replayed_from", f"{letter.dlq_partition}@{letter.dlq_offset}".encode())]
    if r.correlation_id:
        headers.insert(0, ("correlation_id", r.correlation_id.encode()))
    return Replay(letter, r.topic, key, value, headers, rekeyed)


async def replay_letters(
    settings: Settings,
    out: TextIO,
    *,
    reason: str | None,
    since: datetime | None,
    limit: int | None,
    dry_run: bool,
    who: str,
    echo: Callable[[str], None] | None = None,
    owner: str | None = None,
) -> int:
    """Send the chosen dead letters back to their topics (oldest first); return how many."""
    say = echo or (lambda line: print(line, file=out, flush=True))
    letters, _unreadable = await read_letters(settings, reason=reason, since=since, owner=owner)
    chosen = letters[:limit] if limit is not None else letters
    sources = topic_names(settings).sources
    plans: list[Replay] = []
    for letter in chosen:
        plan = _plan(letter, sources)
        if isinstance(plan, str):
            say(f"skip  {format_letter(letter)}: {plan}")
        else:
            plans.append(plan)
    verb = "would send" if dry_run else "sending"
    say(f"{verb} {len(plans)} of {len(letters)} matching dead-lettered event(s)")
    if dry_run:
        for n, plan in enumerate(plans, 1):
            say(_describe(n, len(plans), plan, "would send"))
        return len(plans)
    if not plans:
        return 0
    producer = await open_producer(settings)
    sent = 0
    try:
        for start in range(0, len(plans), _SEND_WINDOW):
            window = plans[start : start + _SEND_WINDOW]
            pending = [
                await producer.send(p.topic, value=p.value, key=p.key, headers=p.headers)
                for p in window
            ]
            for plan, fut in zip(window, pending, strict=True):
                meta = await fut
                sent += 1
                where = f" -> {meta.partition}@{meta.offset}"
                say(_describe(sent, len(plans), plan, "sent", where))
    except Exception as exc:
        raise OperateError(f"replay stopped after {sent} of {len(plans)} events: {exc!r}") from exc
    finally:
        await producer.stop()
        audit(
            who,
            "dlq replay",
            sent,
            reason=reason,
            owner=owner,
            since=since.isoformat() if since else None,
            limit=limit,
            planned=len(plans),
        )
    return sent


def _describe(n: int, total: int, plan: Replay, verb: str, extra: str = "") -> str:
    key = plan.key.decode("utf-8", "replace") if plan.key is not None else "-"
    note = f" [{plan.rekeyed}]" if plan.rekeyed else ""
    return (
        f"[{n}/{total}] {verb} {plan.letter.where} ({_clean(plan.letter.record.reason)})"
        f" to {plan.topic} key={_clean(key)}{extra}{note}"
    )
