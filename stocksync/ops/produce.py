"""``stocksync produce FILE|-``: send JSON lines of contract events to their topics.

Each line is one event or a bulk message (a JSON array of events). Every
event is checked against the event contract here first, with the worker's own
decoder: a line that is not valid is reported with its number and reason and
not sent, so a typo costs a line on the terminal rather than a dead letter.
Valid events go to the topic of their type (``stock.*``, ``order.*``,
``return.*``) under the contract's key (``sku``, ``order_id``, ``rma_id``). A
line whose events all share one topic and key is sent as it was written; a
bulk line that mixes them is split into one bulk message per topic and key
(on the orders and returns topics every event of a bulk message must belong
to its key), its invalid events left out. ``--topic`` and ``--key`` send
every message to one topic or under one key instead.

Progress goes to stderr: on a terminal a line updated in place, otherwise a
line every :data:`PROGRESS_EVERY` seconds. The summary (stdout) gives what was
sent per topic and every line rejected. Exit status 1 when any line was
rejected or failed to send.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TextIO

from aiokafka.errors import KafkaError

from stocksync.agents.topics import TopicSetupError, ensure_topics, topic_names
from stocksync.codecs.events import Event, OrderEvent, ReturnEvent, StockEvent
from stocksync.codecs.messages import decode_message
from stocksync.config.settings import Settings
from stocksync.ops.access import OperateError, open_producer
from stocksync.readmodel import core

__all__ = ["PROGRESS_EVERY", "Outgoing", "Summary", "plan_line", "produce", "run"]

#: Seconds between progress lines when stderr is not a terminal.
PROGRESS_EVERY: Final = 10.0
_TERMINAL_EVERY: Final = 0.5
#: Sends in flight before their deliveries are awaited.
_WINDOW: Final = 1000
#: Rejections listed in the summary; the rest are counted.
_SHOWN: Final = 50
_MAX_REQUEST: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send: where, under which key, and how many events it carries."""

    topic: str
    key: bytes | None
    value: bytes
    events: int
    line: int


@dataclass(slots=True)
class Summary:
    """What a run sent and refused."""

    lines: int = 0
    events: dict[str, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)
    #: ``(line, what went wrong)``, in line order.
    rejected: list[tuple[int, str]] = field(default_factory=list)
    rejected_lines: set[int] = field(default_factory=set)

    def reject(self, line: int, why: str) -> None:
        """Record that (part of) ``line`` was not sent, and why."""
        self.rejected.append((line, why))
        self.rejected_lines.add(line)

    @property
    def sent(self) -> int:
        """Events delivered."""
        return sum(self.events.values())


def _kind(event: Event) -> str:
    if isinstance(event, StockEvent):
        return "stock"
    if isinstance(event, OrderEvent):
        return "orders"
    if isinstance(event, ReturnEvent):
        return "returns"
    raise TypeError(f"no topic for {type(event).__name__}")  # pragma: no cover


def _key(event: Event) -> str:
    own = core.key_of(event)
    return own if own is not None else str(getattr(event, "sku", ""))


_REGEX = re.compile(r"Expected `str` matching regex '.*?'(?= - at |$)")
_IDENTIFIER_WORDS = "Expected 1-64 characters from A-Z, a-z, 0-9 and . _ : / -"


def _short(text: str, limit: int = 200) -> str:
    """One line of at most ``limit`` characters, the identifier pattern said in words."""
    text = _REGEX.sub(_IDENTIFIER_WORDS, " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plan_line(
    value: bytes,
    number: int,
    topics: dict[str, str],
    summary: Summary,
    *,
    topic: str | None = None,
    key: str | None = None,
) -> list[Outgoing]:
    """The messages that send line ``number``; its invalid events go to ``summary``."""
    decoded = decode_message(value)
    for rejection in decoded.rejections:
        where = f"line {number}" if rejection.index is None else (
            f"line {number}, event #{rejection.index}"
        )
        summary.reject(number, f"{where}: {rejection.reason}: {_short(rejection.message)}")
    if not decoded.events:
        return []
    # (topic, key) -> raw events, in line order.
    groups: dict[tuple[str, str], list[bytes]] = {}
    for _index, event, raw in decoded.events:
        kind = _kind(event)
        destination = topic or topics[kind]
        # A stock bulk may mix SKUs under any key: the first event's SKU keys it.
        if key is not None:
            own = key
        elif kind == "stock" and decoded.bulk and groups:
            own = next((k for t, k in groups if t == destination), _key(event))
        else:
            own = _key(event)
        groups.setdefault((destination, own), []).append(raw)
    whole = not decoded.rejections and len(groups) == 1
    out = []
    for (destination, own), raws in groups.items():
        if whole:
            body = value
        elif decoded.bulk:
            body = b"[" + b",".join(raws) + b"]"
        else:
            body = raws[0]
        out.append(Outgoing(destination, own.encode(), body, len(raws), number))
    return out


def _lines(source: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(source, 1):
        stripped = line.strip()
        if stripped:
            yield number, stripped


class _Progress:
    """Progress on stderr: in place on a terminal, else a line every ``PROGRESS_EVERY``."""

    def __init__(self, err: TextIO, total_bytes: int | None, name: str) -> None:
        self.err = err
        self.terminal = err.isatty()
        self.every = _TERMINAL_EVERY if self.terminal else PROGRESS_EVERY
        self.total = total_bytes
        self.name = name
        self.started = time.monotonic()
        self.last = self.started
        self.shown = False

    def update(self, summary: Summary, read_bytes: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        share = f" ({100 * read_bytes / self.total:.0f}%)" if self.total else ""
        text = (
            f"produce: {summary.lines} lines of {self.name}{share}, {summary.sent} events sent"
            f" ({summary.sent / elapsed:,.0f}/s), {len(summary.rejected_lines)} lines rejected"
        )
        if self.terminal:
            self.err.write("\r\x1b[K" + text)
            self.shown = True
        else:
            self.err.write(text + "\n")
        self.err.flush()

    def close(self) -> None:
        if self.shown:
            self.err.write("\r\x1b[K")
            self.err.flush()


async def produce(
    settings: Settings,
    source: IO[bytes],
    out: TextIO,
    err: TextIO,
    *,
    name: str,
    total_bytes: int | None = None,
    topic: str | None = None,
    key: str | None = None,
) -> Summary:
    """Send every valid line of ``source``; print the summary to ``out``; return it."""
    names = topic_names(settings)
    topics = {"stock": names.stock, "orders": names.orders, "returns": names.returns}
    if topic is None:
        # Missing topics get the configured partitions, as the worker would make them.
        try:
            await ensure_topics(settings.broker, settings)
        except TopicSetupError as exc:
            print(f"stocksync produce: warning: could not check the topics: {exc}", file=err)
    producer = await open_producer(settings, max_request_size=_MAX_REQUEST)
    summary = Summary()
    progress = _Progress(err, total_bytes, name)
    pending: list[tuple[Outgoing, asyncio.Future[Any]]] = []
    read_bytes = 0
    started = time.monotonic()

    async def settle() -> None:
        for message, delivery in pending:
            try:
                await delivery
            except KafkaError as exc:
                summary.reject(message.line, f"line {message.line}: not sent: {exc!r}")
            else:
                summary.events[message.topic] = summary.events.get(message.topic, 0) + (
                    message.events
                )
                summary.messages[message.topic] = summary.messages.get(message.topic, 0) + 1
        pending.clear()

    try:
        for number, value in _lines(source):
            summary.lines += 1
            read_bytes += len(value) + 1
            for message in plan_line(value, number, topics, summary, topic=topic, key=key):
                try:
                    delivery = await producer.send(message.topic, message.value, key=message.key)
                except KafkaError as exc:
                    summary.reject(number, f"line {number}: not sent: {exc!r}")
                    continue
                pending.append((message, delivery))
            if len(pending) >= _WINDOW:
                await settle()
            progress.update(summary, read_bytes)
        await settle()
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
        progress.close()
    _print_summary(out, summary, name, time.monotonic() - started)
    return summary


def _print_summary(out: TextIO, summary: Summary, name: str, seconds: float) -> None:
    messages = sum(summary.messages.values())
    print(
        f"sent {summary.sent} event(s) in {messages} message(s) from {summary.lines} line(s)"
        f" of {name} in {seconds:.1f} s",
        file=out,
    )
    width = max((len(t) for t in summary.events), default=0)
    for name_, events in sorted(summary.events.items()):
        print(
            f"  {name_:<{width}}  {events} event(s) in {summary.messages[name_]} message(s)",
            file=out,
        )
    if summary.rejected:
        print(
            f"rejected {len(summary.rejected_lines)} line(s); their invalid events were not sent:",
            file=out,
        )
        for _line, why in summary.rejected[:_SHOWN]:
            print(f"  {why}", file=out)
        if len(summary.rejected) > _SHOWN:
            print(f"  ... and {len(summary.rejected) - _SHOWN} more", file=out)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """``stocksync produce FILE|- [--topic T] [--key K]``: returns the exit status."""
    import logging

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    path: str = args.file
    try:
        if path == "-":
            source: IO[bytes] = sys.stdin.buffer
            size = None
        else:
            source = Path(path).open("rb")  # noqa: SIM115 - closed below
            size = Path(path).stat().st_size or None
    except OSError as exc:
        print(f"stocksync produce: cannot read {path!r}: {exc.strerror}", file=sys.stderr)
        return 1
    name = "stdin" if path == "-" else path
    try:
        summary = asyncio.run(
            produce(
                settings,
                source,
                sys.stdout,
                sys.stderr,
                name=name,
                total_bytes=size,
                topic=args.topic,
                key=args.key,
            )
        )
    except OperateError as exc:
        print(f"stocksync produce: {exc}", file=sys.stderr)
        return 1
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    return 1 if summary.rejected else 0
