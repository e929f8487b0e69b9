"""The two processing stages of the worker, free of Faust: translate and apply.

Faust agents hand each ``take_events`` batch to a :class:`Translator` (one per
source topic) or to the :class:`Applier`; both take plain messages and talk to
the outside only through an :class:`Outbox` (the broker) and a store (Redis),
so the same code runs in the worker, in ``stocksync rebuild`` and in tests.

Ordering that makes a crash harmless (see DESIGN, "Exactly-once effects"):
a translator sends the batch's effects and dead letters and awaits their
delivery, then writes the order/RMA states it changed, and only then returns,
after which Faust may ack the offsets. The applier writes each batch with one
compare-and-set; a conflict reloads and re-applies. Every failure of Redis or
the broker is retried with backoff inside :meth:`process` and never escapes,
because an exception escaping a Faust agent acks (loses) its batch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, cast

import msgspec

from stocksync.agents.dlq import (
    DEFAULT_MAX_MESSAGE_BYTES,
    RECORD_OVERHEAD,
    DeadLetterOut,
    cut_text,
    dead_letter,
)
from stocksync.agents.metrics import WorkerMetrics
from stocksync.agents.owners import Owners
from stocksync.agents.topics import effects_partition
from stocksync.codecs.dlq import FIELD_MAX
from stocksync.codecs.effects import Effect, EffectBatch, Reserve, batch_decoder, batch_encoder
from stocksync.codecs.events import Event, OrderCreated
from stocksync.codecs.messages import Decoded, Reason, Rejection, decode_message
from stocksync.codecs.state import OrderState, Position, RmaState
from stocksync.errors import StocksyncError
from stocksync.readmodel import core
from stocksync.store import (
    ModelLost,
    PositionStore,
    StateStore,
    StoreError,
    StoreUnavailable,
    Write,
)

if TYPE_CHECKING:
    from stocksync.agents.incarnations import IncarnationSource

__all__ = [
    "Applier",
    "Healer",
    "HoldConverter",
    "MessageTooLarge",
    "Outbox",
    "SourceMessage",
    "Translator",
    "effects_messages",
    "header_text",
    "is_too_large",
    "retrying",
]

log = logging.getLogger("stocksync.pipeline")

_T = TypeVar("_T")


class SourceMessage(msgspec.Struct, frozen=True):
    """One message of a source topic as the translators need it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: Produce (or log-append) time, ms since the epoch.
    timestamp_ms: int = 0
    #: The ``correlation_id`` header, when the message carried one.
    correlation_id: str | None = None


def header_text(headers: Any, name: str) -> str | None:
    """The first Kafka header ``name`` as UTF-8 text, or None (headers: pairs or a dict)."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if key == name and value:
            try:
                return bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None


class MessageTooLarge(StocksyncError):
    """The producer or the broker refused messages for their size."""

    def __init__(self, size: int | None, refused: Sequence[int] | None = None) -> None:
        super().__init__(
            f"{len(refused) if refused is not None else 'some'} message(s) refused as too large"
            + (f" (the smallest {size} bytes)" if size is not None else "")
        )
        #: The size of the smallest refused message, when known.
        self.size = size
        #: Positions of the refused messages in what was sent; None: unknown, assume all.
        self.refused = list(refused) if refused is not None else None
class HoldConverter(Protocol):
    """Where the order translator converts checkout holds (api-v1, Holds: conversion)."""

    async def convert(
        self, hold_id: str, order_id: str, order_skus: Sequence[str]
    ) -> frozenset[str]:
        """Convert the hold; the SKUs whose lines the order's reservations take over."""


class Outbox(Protocol):
    """Where translators send: effects by partition, and dead letters. Each call awaits delivery.

    Both raise :class:`MessageTooLarge` when messages were refused for their size
    (the others of the call were delivered).
    """

    async def send_effects(self, batches: dict[int, bytes]) -> None:
        """Send one effects message per destination partition and await delivery."""

    async def send_dead_letters(self, letters: Sequence[DeadLetterOut]) -> None:
        """Send dead letters and await delivery."""


#: What a stage calls when the store says the model is lost: returns once the model is
#: back (rebuilt by this worker or another), after which the operation is tried again.
Healer = Callable[[], Awaitable[None]]


def is_too_large(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a producer's or broker's "message too large"."""
    too_large = _size_errors()
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, too_large):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@functools.cache
def _size_errors() -> tuple[type[Exception], ...]:
    from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

    return (MessageSizeTooLargeError, RecordListTooLargeError)


async def retrying(
    operation: Callable[[], Awaitable[_T]],
    *,
    what: str,
    metrics: WorkerMetrics | None,
    stage: str,
    first_delay: float = 0.05,
    max_delay: float = 5.0,
    heal: Healer | None = None,
) -> _T:
    """Run ``operation`` until it succeeds, backing off on store and broker failures.

    Never gives up: giving up would mean acking events that were not applied.
    When the model is lost (:class:`~stocksync.store.ModelLost`), nothing was
    read or written: ``heal`` brings it back before the next try (without one,
    the operation is retried with backoff until someone else does).
    Cancellation (shutdown) passes through, and so does :class:`MessageTooLarge`
    (a refusal for size, raised as one if the operation did not): sending the
    same bytes again would be refused again, the caller has to send smaller ones.
    """
    delay = first_delay
    attempt = 0
    while True:
        try:
            return await operation()
        except MessageTooLarge:
            raise
        except ModelLost as exc:
            if heal is not None:
                log.error("%s stopped: %s; rebuilding the model from the topics", what, exc,
                          extra={"stage": stage})
                await heal()
                continue
            attempt += 1
            level = logging.ERROR if attempt == 1 or attempt % 10 == 0 else logging.DEBUG
            log.log(level, "%s stopped: %s; waiting for the model to be rebuilt", what, exc,
                    extra={"stage": stage, "attempt": attempt})
            await asyncio.sleep(delay)
            delay = min(max_delay, delay * 2)
        except Exception as exc:
            if is_too_large(exc):
                raise MessageTooLarge(None) from exc
            if not _retriable(exc):
                raise
            attempt += 1
            if metrics is not None:
                metrics.redis_retries.labels(stage).inc()
            level = logging.WARNING if attempt == 1 or attempt % 10 == 0 else logging.DEBUG
            log.log(
                level,
                "%s failed (attempt %d), retrying in %.2fs: %s",
                what,
                attempt,
                delay,
                exc,
                extra={"stage": stage, "attempt": attempt},
            )
            await asyncio.sleep(delay)
            delay = min(max_delay, delay * 2)


def _retriable(exc: Exception) -> bool:
    """Store and broker failures, also when wrapped (Faust's ``ProducerSendError``)."""
    kinds = (StoreUnavailable, OSError, TimeoutError, _broker_error())
    return isinstance(exc, kinds) or isinstance(exc.__cause__, kinds)


@functools.cache
def _broker_error() -> type[Exception]:
    from aiokafka.errors import KafkaError

    return KafkaError  # type: ignore[no-any-return]


def _first(topic: str, partition: int) -> int:
    """The incarnation of every partition when nobody keeps track: the first."""
    return 0


#: The smallest message limit a refusal for size can lower a translator's limit to.
_MIN_MESSAGE_BYTES: Final = 16 * 1024


def effects_messages(effects: list[Effect], max_bytes: int) -> list[bytes]:
    """``effects`` as one or more :class:`EffectBatch` payloads of at most ``max_bytes``
    each (a single effect larger than that still goes alone), in order."""
    payload = batch_encoder.encode(EffectBatch(effects))
    if len(payload) <= max_bytes or len(effects) == 1:
        return [payload]
    half = len(effects) // 2
    return effects_messages(effects[:half], max_bytes) + effects_messages(
        effects[half:], max_bytes
    )


def _summary(exc: BaseException) -> str:
    """``Type: message`` on one short line, for a dead letter (no stack trace)."""
    text = " ".join(str(exc).split())
    return cut_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, 500) or ""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Healed(Exception):
    """The model was rebuilt while the applier held positions of the lost one."""


class _Letter(msgspec.Struct, frozen=True):
    """A rejected event's dead letter to be: its reason, its owner, and what builds it."""

    reason: str
    owner: str
    #: Builds the record for a message size limit.
    make: Callable[[int], DeadLetterOut]


class Translator:
    """Turns source messages of one topic into effects, dead letters and order/RMA states.

    No message stops it: decoding a message and everything done for one event
    run inside an error boundary, so an unexpected exception dead-letters that
    message or event (reason ``internal_error``) and the others go on. Nothing it
    sends is larger than ``max_message_bytes``: dead letters that would be are
    truncated, effects are split into several messages per partition (sent
    round by round, so those of one partition arrive in order), and a refusal
    for size lowers the limit and sends again, smaller.
    """

    def __init__(
        self,
        *,
        kind: str,
        effects_partitions: int,
        outbox: Outbox,
        store: StateStore | None,
        window_ms: int,
        metrics: WorkerMetrics | None = None,
        clock: Callable[[], int] = _now_ms,
        chunk_events: int = 2000,
        heal: Healer | None = None,
        incarnations: IncarnationSource | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        holds: HoldConverter | None = None,
        owners: Owners | None = None,
    ) -> None:
        if kind not in ("stock", "orders", "returns"):
            raise ValueError(f"unknown source kind {kind!r}")
        if kind != "stock" and store is None:
            raise ValueError(f"the {kind} translator needs a state store")
        self.kind = kind
        self.effects_partitions = effects_partitions
        self.outbox = outbox
        self.store = store
        self.window_ms = window_ms
        self.metrics = metrics or WorkerMetrics()
        self.clock = clock
        self.chunk_events = chunk_events
        #: Brings a lost model back (see :func:`retrying`); None in a rebuild's replay.
        self.heal = heal
        #: Which incarnation of its topic each source partition is (None: always the first).
        self.incarnations = incarnations
        #: The largest message sent; lowered when the broker refuses one for its size.
        self.max_message_bytes = max_message_bytes
        self._stuck = 0
        #: Converts checkout holds (order.created with hold_id); None in a rebuild's replay.
        self.holds = holds
        #: Who owns each dead letter (``[dlq.owners]``); the topic defaults without one.
        self.owners = owners or Owners()

    async def process(self, messages: Sequence[SourceMessage]) -> int:
        """Translate a batch; returns how many effects were sent.

        The batch is translated and sent in chunks of about ``chunk_events``
        events: a batch of bulk messages can hold 100 times more events than
        messages, and sending its effects as it goes lets the applier start on
        the first chunk while this one translates the next. Faust acks the batch
        only when all of it is done, so a chunk changes nothing on a crash: the
        batch is redelivered, and its effects keep their ids.
        """
        now = self.clock()
        incarnations = self.incarnations
        if incarnations is not None:
            await retrying(
                lambda: incarnations.prepare(messages),
                what="checking the source partitions' incarnations",
                metrics=self.metrics,
                stage="incarnations",
            )
        sent = 0
        chunk: list[tuple[SourceMessage, Decoded]] = []
        events = 0
        for msg in messages:
            try:
                decoded = decode_message(msg.value)
            except Exception as exc:  # a bug must cost one message, not stop the partition
                decoded = self._undecodable(msg, exc)
            chunk.append((msg, decoded))
            events += len(decoded.events) + len(decoded.rejections)
            if events >= self.chunk_events:
                sent += await self._translate_chunk(chunk, now)
                chunk, events = [], 0
        if chunk:
            sent += await self._translate_chunk(chunk, now)
        return sent

    def _undecodable(self, msg: SourceMessage, exc: Exception) -> Decoded:
        log.error(
            "decoding the message at %s[%d]@%d raised an unexpected error",
            msg.topic,
            msg.partition,
            msg.offset,
            exc_info=exc,
        )
        rejection = Rejection(
            reason=Reason.INTERNAL_ERROR,
            message=f"decoding it raised an unexpected error: {_summary(exc)}",
            index=None,
            raw=msg.value or b"",
        )
        return Decoded(events=[], rejections=[rejection], bulk=False)

    def _internal_letter(
        self,
        msg: SourceMessage,
        index: int | None,
        stage: str,
        exc: Exception,
        traced: bool,
        raw: bytes,
        correlation_id: str | None,
        now: int,
        source: str,
    ) -> _Letter:
        """Log an unexpected error of one event (with its stack trace unless ``traced``)
        and make its ``internal_error`` dead letter: the error boundary of ``stage``."""
        log.error(
            "%s the event at %s[%d]@%d%s raised an unexpected error: %s",
            stage,
            msg.topic,
            msg.partition,
            msg.offset,
            f" #{index}" if index is not None else "",
            _summary(exc),
            exc_info=None if traced else exc,
        )
        why = f"{stage} it raised an unexpected error: {_summary(exc)}"
        return self._letter(
            msg, index, Reason.INTERNAL_ERROR, why, raw, correlation_id, now, source
        )

    async def _translate_chunk(
        self, chunk: Sequence[tuple[SourceMessage, Decoded]], now: int
    ) -> int:
        consumed: Counter[str] = Counter()
        skipped: Counter[str] = Counter()
        letters: list[_Letter] = []
        valid: list[tuple[SourceMessage, int | None, Event, bytes]] = []
        traced = False  # one stack trace per chunk is enough to find a bug
        for msg, decoded in chunk:
            key = msg.key.decode("utf-8", "replace") if msg.key is not None else None
            for rejection in decoded.rejections:
                letters.append(
                    self._letter(
                        msg,
                        rejection.index,
                        rejection.reason,
                        rejection.message,
                        rejection.raw,
                        msg.correlation_id,
                        now,
                    )
                )
            for index, event, raw in decoded.events:
                try:
                    if event.correlation_id is None and msg.correlation_id is not None:
                        event = msgspec.structs.replace(event, correlation_id=msg.correlation_id)
                    misplaced = core.check_placement(event, self.kind, key, decoded.bulk)
                except Exception as exc:  # a bug must cost one event, not stop the partition
                    letters.append(
                        self._internal_letter(
                            msg, index, "checking", exc, traced, raw,
                            event.correlation_id or msg.correlation_id, now, event.source,
                        )
                    )
                    traced = True
                    continue
                if misplaced is not None:
                    letters.append(
                        self._letter(
                            msg,
                            index,
                            misplaced.reason,
                            misplaced.message,
                            raw,
                            event.correlation_id,
                            now,
                            event.source,
                        )
                    )
                    continue
                valid.append((msg, index, event, raw))

        states = await self._load_states(valid)
        changed: dict[str, OrderState | RmaState] = {}
        by_partition: dict[int, list[Effect]] = defaultdict(list)
        sent = 0
        incarnation = self.incarnations.of if self.incarnations is not None else _first
        # An event this long may make an effect that does not fit in a message alone.
        long_event = self.max_message_bytes - RECORD_OVERHEAD - 2 * FIELD_MAX - 512
        for msg, index, event, raw in valid:
            try:
                entity = core.key_of(event)
                ref = core.SourceRef(
                    kind=self.kind,
                    partition=msg.partition,
                    offset=msg.offset,
                    index=index or 0,
                    produced=msg.timestamp_ms,
                    topic=msg.topic,
                    incarnation=incarnation(msg.topic, msg.partition),
                )
                state = states.get(entity) if entity is not None else None
                outcome, new_state = core.translate(event, state, ref, now, self.window_ms)
                if isinstance(outcome, core.Translated):
                    cid = event.correlation_id
                    if cid is not None and len(cid) > FIELD_MAX:
                        outcome = self._short_cids(outcome, cid)
                    if len(raw) > long_event:
                        outcome = self._fits(outcome)
            except Exception as exc:  # a bug must cost one event, not stop the partition
                letters.append(
                    self._internal_letter(
                        msg, index, "translating", exc, traced, raw, event.correlation_id, now,
                        event.source,
                    )
                )
                traced = True
                continue
            if isinstance(outcome, core.Rejected):
                letters.append(
                    self._letter(
                        msg, index, outcome.reason, outcome.message, raw, event.correlation_id,
                        now, event.source,
                    )
                )
                continue
            if isinstance(outcome, core.Skipped):
                skipped[outcome.why] += 1
                log.debug("skipped %s event %s: %s", event.source, event.event_id, outcome.why)
                continue
            consumed[cast(str, type(event).__struct_config__.tag)] += 1
            if entity is not None and new_state is not None:
                states[entity] = new_state
                changed[entity] = new_state
            effects: Sequence[Effect] = outcome.effects
            if type(event) is OrderCreated and event.hold_id is not None and self.holds:
                effects = await self._convert(event, event.hold_id, effects)
            for effect in effects:
                by_partition[effects_partition(effect.sku, self.effects_partitions)].append(effect)
                sent += 1

        if letters:
            await self._send_letters(letters)
            counted = Counter((letter.reason, letter.owner) for letter in letters)
            for (reason, owner), n in counted.items():
                self.metrics.dead_letters.labels(reason, owner).inc(n)
        if by_partition:
            await self._send_effects(by_partition, sent)
        self._count(consumed, skipped, sent)
        if changed and self.store is not None:
            store = self.store
            await retrying(
                lambda: store.save_states(changed.values()),
                what=f"saving {len(changed)} {self.kind} states",
                metrics=self.metrics,
                stage="state",
                heal=self.heal,
            )
        return sent

    @staticmethod
    def _short_cids(outcome: core.Translated, cid: str) -> core.Translated:
        """Effects carry at most ``FIELD_MAX`` characters of a correlation id: one long id
        on a 500-line order must not make 500 long effects."""
        short = cid[:FIELD_MAX]
        return core.Translated(
            [msgspec.structs.replace(e, cid=short) for e in outcome.effects]
        )

    def _fits(self, outcome: core.Translated) -> core.Translated | core.Rejected:
        """Reject an event with an effect that cannot fit in a message even alone."""
        limit = self.max_message_bytes - RECORD_OVERHEAD
        for effect in outcome.effects:
            size = len(batch_encoder.encode(EffectBatch([effect])))
            if size > limit:
                return core.Rejected(
                    Reason.INTERNAL_ERROR,
                    f"it cannot be processed: one of its effects is {size} bytes, more than "
                    f"the {limit} a message to the broker may carry (is a field such as "
                    "source that long?)",
                )
        return outcome

    async def _lower_limit(self, exc: MessageTooLarge) -> None:
        """After a refusal for size, send at most 3/4 of that size (or of the limit) from now on.

        At the floor nothing smaller can be made: wait, like any broker failure, so a
        broker that refuses everything is retried with backoff, not in a busy loop.
        """
        refused = exc.size if exc.size is not None else self.max_message_bytes
        lowered = max(_MIN_MESSAGE_BYTES, min(self.max_message_bytes, refused) * 3 // 4)
        if lowered >= self.max_message_bytes:
            self._stuck += 1
            delay = min(5.0, 0.05 * 2 ** min(self._stuck, 7))
            log.error(
                "the broker refuses messages of %d bytes as too large, and none is sent "
                "smaller; retrying in %.2fs (check the broker's message.max.bytes)",
                refused,
                delay,
            )
            await asyncio.sleep(delay)
            return
        self._stuck = 0
        log.warning(
            "the broker refused a message of %s bytes as too large; sending at most %d bytes "
            "from now on (set worker.max_message_bytes, or the broker's message.max.bytes)",
            exc.size if exc.size is not None else "about",
            lowered,
        )
        self.max_message_bytes = lowered

    async def _send_letters(self, letters: Sequence[_Letter]) -> None:
        """Send dead letters, truncated to fit; resend smaller those refused for size."""
        pending = [letter.make for letter in letters]
        built = [make(self.max_message_bytes) for make in pending]
        truncated = sum(out.truncated for out in built)
        if truncated:
            log.warning(
                "%d dead letter(s) would be larger than the %d bytes the broker takes: sent "
                "truncated (reason, location, key, correlation id, the first 64 KiB of the "
                "value, its SHA-256 and length)",
                truncated,
                self.max_message_bytes,
            )
        while True:
            try:
                await retrying(
                    lambda b=built: self.outbox.send_dead_letters(b),  # type: ignore[misc]
                    what=f"sending {len(built)} dead letters",
                    metrics=self.metrics,
                    stage="dlq",
                )
                return
            except MessageTooLarge as exc:
                await self._lower_limit(exc)
                again = exc.refused if exc.refused is not None else range(len(pending))
                pending = [pending[i] for i in again]
                built = [make(self.max_message_bytes) for make in pending]

    async def _send_effects(self, by_partition: dict[int, list[Effect]], sent: int) -> None:
        """Send effects in messages that fit, round by round: the n-th message of every
        partition in round n, so a partition's messages are delivered in order."""
        while True:
            budget = self.max_message_bytes - RECORD_OVERHEAD
            rounds: list[dict[int, bytes]] = []
            for partition, effects in by_partition.items():
                for n, payload in enumerate(effects_messages(effects, budget)):
                    if n == len(rounds):
                        rounds.append({})
                    rounds[n][partition] = payload
            try:
                for payloads in rounds:
                    await retrying(
                        lambda p=payloads: self.outbox.send_effects(p),  # type: ignore[misc]
                        what=f"sending {sent} effects",
                        metrics=self.metrics,
                        stage="effects",
                    )
                return
            except MessageTooLarge as exc:
                # Resent from the first round: what was delivered is skipped as duplicate.
                await self._lower_limit(exc)

    async def _convert(
        self, event: OrderCreated, hold_id: str, effects: Sequence[Effect]
    ) -> Sequence[Effect]:
        """Convert the order's hold: its reservations of the held SKUs carry ``hold_id``."""
        holds = self.holds
        assert holds is not None
        skus = [line.sku for line in event.lines]
        try:
            taken = await retrying(
                lambda: holds.convert(hold_id, event.order_id, skus),
                what=f"converting hold {hold_id!r}",
                metrics=self.metrics,
                stage="state",
            )
        except StoreError as exc:  # not Redis being away: retrying would not help
            log.error("order %s reserves without converting hold %r: %s",
                      event.order_id, hold_id, exc)
            return effects
        if not taken:
            return effects
        self.metrics.holds_converted.inc()
        return [
            msgspec.structs.replace(e, hold=hold_id)
            if type(e) is Reserve and e.sku in taken
            else e
            for e in effects
        ]

    def _count(self, consumed: Counter[str], skipped: Counter[str], sent: int) -> None:
        # Counted per batch, not per event: a labelled inc costs more than translating.
        metrics = self.metrics
        for tag, n in consumed.items():
            metrics.events_consumed.labels(self.kind, tag).inc(n)
        for why, n in skipped.items():
            metrics.events_skipped.labels(self.kind, why).inc(n)
        metrics.effects_sent.inc(sent)

    async def _load_states(
        self, valid: Sequence[tuple[SourceMessage, int | None, Event, bytes]]
    ) -> dict[str, OrderState | RmaState]:
        if self.store is None:
            return {}
        ids = list(dict.fromkeys(i for _, _, e, _ in valid if (i := core.key_of(e)) is not None))
        if not ids:
            return {}
        store = self.store
        loader = store.load_orders if self.kind == "orders" else store.load_rmas
        loaded: dict[str, OrderState] | dict[str, RmaState] = await retrying(
            lambda: loader(ids),
            what=f"loading {len(ids)} {self.kind} states",
            metrics=self.metrics,
            stage="state",
            heal=self.heal,
        )
        return dict(loaded)

    def _letter(
        self,
        msg: SourceMessage,
        index: int | None,
        reason: str,
        message: str,
        raw: bytes,
        correlation_id: str | None,
        now: int,
        source: str | None = None,
    ) -> _Letter:
        """Count and log a rejected event; return what builds its record for a size limit.

        ``source`` is the decoded event's; without one it is read from ``raw``.
        """
        self.metrics.events_rejected.labels(self.kind, reason).inc()
        owner = self.owners.of_raw(self.kind, raw, source)
        log.warning(
            "rejected event at %s[%d]@%d%s: %s: %s",
            msg.topic,
            msg.partition,
            msg.offset,
            f" #{index}" if index is not None else "",
            reason,
            cut_text(message),
            extra={"correlation_id": cut_text(correlation_id), "reason": reason, "owner": owner},
        )
        return _Letter(reason, owner, lambda max_bytes: dead_letter(
            reason=reason,
            message=message,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            index=index,
            key=msg.key,
            correlation_id=correlation_id,
            raw=raw,
            now_ms=now,
            max_bytes=max_bytes,
            owner=owner,
        ))


class Applier:
    """Applies effects to SKU positions and writes each batch to the store in one round trip.

    Positions of recently seen SKUs stay in memory (bounded LRU); the store's
    compare-and-set catches a cache made stale by another writer.
    """

    def __init__(
        self,
        *,
        store: PositionStore,
        topology: core.Topology,
        window_ms: int,
        metrics: WorkerMetrics | None = None,
        cache_size: int = 200_000,
        clock: Callable[[], int] = _now_ms,
        heal: Healer | None = None,
    ) -> None:
        self.store = store
        #: Brings a lost model back (see :func:`retrying`); None in a rebuild's replay.
        self.heal = heal
        self.topology = topology
        self.window_ms = window_ms
        self.metrics = metrics or WorkerMetrics()
        self.cache_size = cache_size
        self.clock = clock
        self._cache: OrderedDict[str, Position] = OrderedDict()
        self._oversold: set[tuple[str, str]] = set()

    def forget(self) -> None:
        """Drop cached positions (after a rebalance another worker may have written them)."""
        self._cache.clear()

    async def process(self, payloads: Sequence[bytes]) -> int:
        """Apply a batch of effects messages; returns how many SKUs were written."""
        by_sku: dict[str, list[Effect]] = defaultdict(list)
        for payload in payloads:
            try:
                batch = batch_decoder.decode(payload)
            except msgspec.DecodeError as exc:
                # Only our translators write this topic; a bad message is a bug, not data.
                log.error("skipping an undecodable effects message: %s", exc)
                continue
            for effect in batch.effects:
                by_sku[effect.sku].append(effect)
        if not by_sku:
            return 0
        while True:
            try:
                written = await self._apply_once(by_sku)
            except _Healed:
                # The model was rebuilt under us: every cached position (some changed in
                # place by this attempt) belongs to the lost one. Start over from the new.
                self.forget()
                continue
            if written is not None:
                return written
            self.metrics.cas_conflicts.inc()
            log.info("another writer changed SKUs of this batch; reloading and re-applying")

    async def _heal_then_restart(self) -> None:
        assert self.heal is not None
        await self.heal()
        raise _Healed

    async def _apply_once(self, by_sku: dict[str, list[Effect]]) -> int | None:
        positions = await self._positions(list(by_sku))
        now = self.clock()
        writes: list[Write] = []
        applied_total = skipped_total = 0
        touched: list[Effect] = []
        for sku, effects in by_sku.items():
            pos = positions[sku]
            before = pos.version
            applied, skipped = core.apply_effects(pos, effects, now, self.window_ms)
            applied_total += applied
            skipped_total += skipped
            if applied:
                touched.extend(effects)
                # The holds converted and the last correlation id, in one pass over the
                # SKU's effects (this runs for every SKU written).
                holds: dict[str, None] | None = None
                cid = None
                for e in effects:
                    if e.cid:
                        cid = e.cid
                    if type(e) is Reserve and e.hold is not None:
                        if holds is None:
                            holds = {}
                        holds[e.hold] = None
                writes.append(Write(pos, before, tuple(holds) if holds else (), cid))
        if writes:
            conflicts = await retrying(
                lambda: self.store.write_batch(writes),
                what=f"writing {len(writes)} SKUs",
                metrics=self.metrics,
                stage="apply",
                heal=None if self.heal is None else self._heal_then_restart,
            )
            if conflicts:
                for sku in by_sku:
                    self._cache.pop(sku, None)
                return None
        self._account(writes, applied_total, skipped_total, touched)
        return len(writes)

    async def _positions(self, skus: list[str]) -> dict[str, Position]:
        cache = self._cache
        found: dict[str, Position] = {}
        missing: list[str] = []
        for sku in skus:
            pos = cache.get(sku)
            if pos is None:
                missing.append(sku)
            else:
                cache.move_to_end(sku)
                found[sku] = pos
        if missing:
            loaded = await retrying(
                lambda: self.store.load_positions(missing),
                what=f"loading {len(missing)} positions",
                metrics=self.metrics,
                stage="apply",
                heal=None if self.heal is None else self._heal_then_restart,
            )
            for sku in missing:
                pos = loaded.get(sku) or Position(sku=sku)
                found[sku] = cache[sku] = pos
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return found

    def _account(
        self, writes: list[Write], applied: int, skipped: int, touched: list[Effect]
    ) -> None:
        oversold = self._oversold
        oversold_at = core.oversold_at
        for w in writes:
            pos = w.position
            for name, node in pos.nodes.items():
                if oversold_at(node):
                    oversold.add((pos.sku, name))
                elif oversold:
                    oversold.discard((pos.sku, name))
        metrics = self.metrics
        metrics.effects_applied.inc(applied)
        metrics.effects_skipped.inc(skipped)
        metrics.skus_written.inc(len(writes))
        metrics.oversold.set(len(oversold))
        if not writes:
            return
        now = time.time()
        metrics.last_applied.set(now)
        metrics.freshness.observe_many(
            "occurred", [now - e.at[0] - e.at[1] / 1e9 for e in touched]
        )
        produced = [e.produced for e in touched if e.produced]
        if produced:
            metrics.freshness.observe_many("produced", [now - p / 1e3 for p in produced])
            metrics.last_event_produced.set(max(produced) / 1e3)
