"""``stocksync rebuild``: recompute the whole read model from the source topics, then switch.

The model is rebuilt beside the live one and replaces it in one step:

1. refuse while workers run (``--force`` skips the check): a worker writing
   the live model during a rebuild would be lost. Running workers are found by
   the heartbeats they keep in Redis (:meth:`~stocksync.store.RedisStore.beat`),
   not by the broker's group membership, which outlives a stopped worker;
2. read the stock, orders and returns topics from their earliest offsets up
   to their end (a plain consumer, no group), and run the worker's own
   :class:`~stocksync.agents.stages.Translator` and
   :class:`~stocksync.agents.stages.Applier` over a
   :class:`~stocksync.store.MemoryStore`, the translators handing effects
   straight to the applier. Each batch runs at the produce time of its
   messages, so de-duplication windows and ``updated_at`` are those of the
   events, not of the rebuild;
3. refuse (without ``--force``) when the topics hold fewer than half the SKUs
   the live model has: the broker lost its history, and switching would
   replace a model with a fragment of it;
4. write every position and order/RMA state into a fresh key space
   ``{namespace}:{generation}`` through the worker's own store code
   (:meth:`~stocksync.store.RedisStore.write_batch` and ``save_states``), after
   its identity marker, each SKU's version going on from the one it had in the
   live model, so versions never repeat;
5. switch the generation pointer (refused if another rebuild switched first)
   and append a reload entry to the previous generation's change stream for
   processes following it.

The previous generation's keys are left in place for a rollback (set the
pointer back) and listed at the end, to be deleted once every API replica has
switched. Events that were invalid are counted, not dead-lettered again: the
worker sent them to the dead-letter topic when it first saw them.

:func:`rebuild_generation` (steps 2, 4 and 5) is also what a worker runs when
Redis lost the model (:mod:`stocksync.daemon.healing`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Final, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from stocksync.agents.dlq import DeadLetterOut
from stocksync.agents.incarnations import IncarnationSource, StoredIncarnations
from stocksync.agents.owners import Owners
from stocksync.agents.stages import Applier, SourceMessage, Translator
from stocksync.agents.topics import topic_names
from stocksync.codecs.state import OrderState
from stocksync.config.addresses import redacted_url
from stocksync.config.settings import Settings
from stocksync.ops.access import (
    OperateError,
    Refused,
    audit,
    existing_topics,
    kafka_options,
    open_producer,
    open_store,
    read_topics,
)
from stocksync.readmodel import core
from stocksync.store import (
    MemoryStore,
    RedisStore,
    StoreError,
    StoreUnavailable,
    SwitchRefused,
    Write,
)
from stocksync.store.generation import effective_namespace, new_generation
from stocksync.store.incarnations import IncarnationRecords

__all__ = [
    "HEARTBEAT_FRESH_SECONDS",
    "RebuildResult",
    "active_workers",
    "ask",
    "committed_offsets",
    "rebuild",
    "rebuild_generation",
]

log = logging.getLogger("stocksync.operate")

#: SKUs written per script call.
_PAGE: Final = 2000
#: Seconds between progress lines when stderr is not a terminal.
_PROGRESS_EVERY: Final = 2.0
#: How far ahead of this host's clock a producer's may be (ms).
_CLOCK_MARGIN_MS: Final = 2000
#: A worker whose last heartbeat is older than this is taken for stopped.
HEARTBEAT_FRESH_SECONDS: Final = 15.0


class RebuildResult:
    """What a rebuild produced."""

    def __init__(self) -> None:
        self.messages = 0
        self.invalid = 0
        self.skus = 0
        self.orders = 0
        self.rmas = 0
        self.generation = ""
        self.namespace = ""
        self.previous = ""


class _Clock:
    """The time the stages see: the produce time of the batch being processed."""

    def __init__(self) -> None:
        self.now_ms = 0

    def __call__(self) -> int:
        return self.now_ms or time.time_ns() // 1_000_000


class _DirectOutbox:
    """Hands effects straight to the applier; counts dead letters (mostly on the DLQ already).

    With ``committed`` (the worker group's committed offset per source topic
    partition), the letters of events at or past it are kept to be sent again:
    the worker may not have dead-lettered those yet, and once the rebuilt state
    has them it would skip them as replays.
    """

    def __init__(self, applier: Applier, committed: dict[tuple[str, int], int] | None) -> None:
        self.applier = applier
        self.invalid = 0
        self.committed = committed
        self.resend: list[DeadLetterOut] = []

    async def send_effects(self, batches: dict[int, bytes]) -> None:
        """Apply the effects now, in partition order."""
        await self.applier.process([batches[p] for p in sorted(batches)])

    async def send_dead_letters(self, letters: Sequence[DeadLetterOut]) -> None:
        """Count them; keep those the worker may not have sent yet."""
        self.invalid += len(letters)
        if self.committed is None:
            return
        for letter in letters:
            where = dict(letter.headers)
            topic = where.get("source_topic", b"").decode()
            partition = int(where.get("source_partition", b"-1"))
            offset = int(where.get("source_offset", b"-1"))
            if offset >= self.committed.get((topic, partition), 0):
                self.resend.append(letter)


async def active_workers(store: RedisStore) -> str | None:
    """Why workers look active (a sentence naming them), or None when none keeps a heartbeat."""
    live = await store.live_workers(HEARTBEAT_FRESH_SECONDS)
    if not live:
        return None
    return (
        f"{len(live)} worker(s) kept a heartbeat in Redis in the last"
        f" {HEARTBEAT_FRESH_SECONDS:.0f} s ({', '.join(live)})"
    )


class _Progress:
    """Progress on stderr: one line rewritten on a terminal, else a line every few seconds."""

    def __init__(self, err: TextIO | None) -> None:
        self.err = err
        self.tty = err is not None and err.isatty()
        self.last = 0.0
        self.shown = ""

    def show(self, read: int, expected: int, skus: int, final: bool = False) -> None:
        """Report ``read`` of about ``expected`` messages (never more than 100%)."""
        if self.err is None:
            return
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.tty else _PROGRESS_EVERY):
            return
        if final:
            line = f"rebuild: read {read:,} messages, {skus:,} SKUs"
        elif read >= expected:
            # The end offsets read at start under-count on some brokers: say no more than known.
            line = (
                f"rebuild: read {read:,} messages (past the ~{expected:,} expected),"
                f" {skus:,} SKUs"
            )
        else:
            line = (
                f"rebuild: read {read:,} of ~{expected:,} messages ({read * 100 // expected}%),"
                f" {skus:,} SKUs"
            )
        if line == self.shown and not (final and self.tty):
            return
        self.last, self.shown = now, line
        if self.tty:
            self.err.write("\r" + line + ("\n" if final else ""))
        else:
            self.err.write(line + "\n")
        self.err.flush()


async def _replay_sources(
    settings: Settings,
    err: TextIO | None,
    result: RebuildResult,
    committed: dict[tuple[str, int], int] | None = None,
    incarnations: IncarnationSource | None = None,
) -> tuple[MemoryStore, list[DeadLetterOut]]:
    """Run the worker's stages over every source message into a memory store.

    Returns the store and the dead letters to send again (see :class:`_DirectOutbox`).
    ``incarnations`` are the live topics' (the watermarks get the workers' keys).
    """
    names = topic_names(settings)
    present = await existing_topics(settings)
    if not any(topic in present for topic in names.sources):
        raise Refused(
            f"none of the source topics {', '.join(names.sources)} exists; check topic_prefix"
            " (STOCKSYNC_TOPIC_PREFIX) - rebuilding would switch to an empty model"
        )
    window_ms = int(settings.worker.dedup_window_hours * 3_600_000)
    store = await MemoryStore.fresh(core.topology_of(settings))
    clock = _Clock()
    applier = Applier(
        store=store, topology=core.topology_of(settings), window_ms=window_ms, clock=clock
    )
    outbox = _DirectOutbox(applier, committed)
    kinds = {names.stock: "stock", names.orders: "orders", names.returns: "returns"}
    owners = Owners(settings.dlq)
    translators = {
        kind: Translator(
            kind=kind,
            effects_partitions=1,  # effects never leave this process
            outbox=outbox,
            store=None if kind == "stock" else store,
            window_ms=window_ms,
            clock=clock,
            incarnations=incarnations,
            owners=owners,
        )
        for kind in kinds.values()
    }
    progress = _Progress(err)
    expected = 0
    # Producers may keep the topics busy: stop once each partition is past what it held
    # when reading began (a record produced after that, allowing for clocks a little off).
    since_ms = time.time_ns() // 1_000_000 + _CLOCK_MARGIN_MS
    async for records, seen in read_topics(settings, names.sources, since_ms=since_ms):
        by_kind: dict[str, list[SourceMessage]] = defaultdict(list)
        for rec in records:
            by_kind[kinds[rec.topic]].append(
                SourceMessage(
                    topic=rec.topic,
                    partition=rec.partition,
                    offset=rec.offset,
                    key=rec.key,
                    value=rec.value,
                    timestamp_ms=rec.timestamp_ms,
                    correlation_id=rec.header("correlation_id"),
                )
            )
        for kind, messages in by_kind.items():
            clock.now_ms = max(m.timestamp_ms for m in messages)
            await translators[kind].process(messages)
        result.messages = seen["read"]
        expected = seen["expected"]
        progress.show(result.messages, expected, await store.sku_count())
    progress.show(result.messages, expected, await store.sku_count(), True)
    result.invalid = outbox.invalid
    return store, outbox.resend




async def _write_generation(
    target: RedisStore, old: RedisStore, model: MemoryStore, generation: str,
    meta: dict[str, str], version_floor: int = 0,
) -> tuple[int, int, int]:
    """Write ``model`` as ``generation`` through ``target``; returns (SKUs, orders, RMAs).

    The marker goes first, so the generation's first write already has it. A
    SKU's version goes on from its version in the ``old`` generation (added to
    the rebuilt one), so versions never repeat or go backwards across a rebuild.
    A SKU the old generation does not have goes on from ``version_floor``
    instead (see :func:`rebuild_generation`).
    """
    await target.begin_generation(generation)
    positions = list(model.positions())
    for start in range(0, len(positions), _PAGE):
        page = positions[start : start + _PAGE]
        before = await old.load_versions([p.sku for p in page])
        for position in page:
            position.version += before.get(position.sku, version_floor)
        # Nobody follows this generation's stream before the switch: no change entries.
        conflicts = await target.write_batch([Write(p, 0) for p in page], announce=False)
        if conflicts:
            raise OperateError(
                f"{len(conflicts)} SKU(s) of the new generation {target.namespace} were written"
                " by someone else meanwhile (another rebuild?); nothing was switched"
            )
    states = list(model.states())
    await target.save_states(states)
    await target.write_meta(meta)
    orders = sum(1 for s in states if isinstance(s, OrderState))
    return len(positions), orders, len(states) - orders


async def rebuild_generation(
    settings: Settings,
    store: RedisStore,
    *,
    who: str,
    err: TextIO | None = None,
    check: Callable[[MemoryStore, RedisStore], Awaitable[None]] | None = None,
    resend_dead_letters: bool = False,
    lost: bool = False,
) -> RebuildResult:
    """Replay the topics into a new generation beside ``store``'s live one and switch to it.

    ``store`` is re-bound to the new generation. ``check`` may refuse (raise) once the
    topics were replayed, before anything is written. With ``resend_dead_letters``
    (workers were running), the dead letters of events past the worker group's
    committed offsets are sent again before the switch.

    With ``lost`` (Redis lost the model, so there are no old versions to go on
    from), each SKU's version goes on from the time of the rebuild in ms since
    the epoch: above any version served before, as long as no SKU changed more
    than once a millisecond on average since the previous loss (a version
    counts batches, not events), so versions never go back for a reader, an
    ETag or a feed consumer keeping the highest version it applied.
    """
    result = RebuildResult()
    previous = await store.pointer()
    old_ns = effective_namespace(settings.redis_namespace, previous)
    old = store.beside(old_ns)
    started = datetime.now(UTC)
    # The worker logged every invalid event when it first saw it; do not repeat them all.
    pipeline_log = logging.getLogger("stocksync.pipeline")
    level = pipeline_log.level
    pipeline_log.setLevel(logging.ERROR)
    committed = await committed_offsets(settings) if resend_dead_letters else None
    # A recreated topic is read as incarnation n by the workers: rebuild with their keys.
    known = IncarnationRecords(store.client, store.keys)
    incarnations = await StoredIncarnations.load(known)
    try:
        model, resend = await _replay_sources(settings, err, result, committed, incarnations)
    finally:
        pipeline_log.setLevel(level)
    if check is not None:
        await check(model, old)
    generation = new_generation()
    new_ns = effective_namespace(settings.redis_namespace, generation)
    target = store.beside(new_ns)
    meta = {
        "generation": generation,
        "rebuilt_at": started.isoformat().replace("+00:00", "Z"),
        "rebuilt_by": who,
        "messages": str(result.messages),
        "previous": old_ns,
        "topics": json.dumps(list(topic_names(settings).sources)),
    }
    try:
        floor = time.time_ns() // 1_000_000 if lost else 0
        result.skus, result.orders, result.rmas = await _write_generation(
            target, old, model, generation, meta, floor
        )
        if resend:
            await _send_dead_letters(settings, resend)
        # Keep (or, after Redis lost them, restore) the numbers the watermarks were keyed by.
        await known.save(incarnations.records())
        await target.switch_to(generation, previous)
    except SwitchRefused as exc:
        raise OperateError(str(exc)) from exc
    except StoreError as exc:
        raise OperateError(
            f"writing the new model under {new_ns}: failed ({exc}); the live model is"
            f" unchanged under {old_ns}:"
        ) from exc
    await store.resolve()
    result.generation, result.namespace, result.previous = generation, new_ns, old_ns
    return result


async def committed_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    """The worker group's committed offset per source topic partition ({} if unknown).

    Asked with a consumer of the group that never joins it (OffsetFetch only).
    """
    consumer = AIOKafkaConsumer(
        **kafka_options(settings),
        client_id="stocksync-operate",
        group_id=settings.worker.group_id,
        enable_auto_commit=False,
    )
    found: dict[tuple[str, int], int] = {}
    try:
        await consumer.start()
        existing = await consumer.topics()
        for topic in topic_names(settings).sources:
            if topic not in existing:
                continue
            for partition in sorted(consumer.partitions_for_topic(topic) or ()):
                offset = await consumer.committed(TopicPartition(topic, partition))
                if offset is not None and offset >= 0:
                    found[(topic, partition)] = offset
    except (KafkaError, OSError) as exc:
        log.warning("could not read the committed offsets of %r (%s); every dead letter of"
                    " the rebuild is sent again", settings.worker.group_id, exc)
        return {}
    finally:
        await consumer.stop()
    return found


async def _send_dead_letters(settings: Settings, letters: Sequence[DeadLetterOut]) -> None:
    topic = topic_names(settings).dlq
    producer = await open_producer(settings)
    try:
        pending = [
            await producer.send(topic, key=letter.key, value=letter.value,
                                headers=letter.headers)
            for letter in letters
        ]
        for fut in pending:
            await fut
    except KafkaError as exc:
        raise OperateError(f"sending {len(letters)} dead letter(s) failed: {exc!r}") from exc
    finally:
        await producer.stop()
    log.info("sent %d dead letter(s) of events the workers had not committed", len(letters))


async def rebuild(
    settings: Settings,
    out: TextIO,
    err: TextIO,
    *,
    yes: bool,
    force: bool,
    who: str,
    confirm: Callable[[str], bool] | None = None,
) -> RebuildResult:
    """Rebuild the model into a new generation and switch to it; see the module docstring."""
    store = open_store(settings)
    forced: list[str] = []
    try:
        try:
            busy = await active_workers(store)
            old_ns = await store.resolve()
        except StoreUnavailable as exc:
            raise OperateError(
                f"Redis at {redacted_url(settings.redis_url)!r} failed: {exc}"
            ) from exc
        if busy is not None:
            if not force:
                raise Refused(
                    f"{busy}. Stop every `stocksync worker` first (a worker writing the live"
                    " model during a rebuild would have its writes lost), then run rebuild"
                    " again; --force skips this check"
                )
            forced.append("workers")
            print(f"stocksync rebuild: going on despite --force: {busy}", file=err)
        if not yes:
            question = (
                f"Rebuild the read model (now under {old_ns!r}) from"
                f" {', '.join(topic_names(settings).sources)}? [y/N] "
            )
            if confirm is None or not confirm(question):
                raise Refused("not confirmed; nothing changed (use --yes to skip the question)")

        async def enough(model: MemoryStore, old: RedisStore) -> None:
            rebuilt, live = await model.sku_count(), await old.sku_count()
            if rebuilt * 2 >= live:
                return
            why = (
                f"the topics hold {rebuilt:,} SKU(s) but the live model under {old_ns!r} has"
                f" {live:,}: the topics have lost history (a new broker, a reset, retention)"
            )
            if not force:
                raise Refused(
                    f"{why}; rebuilding would replace the model with a fragment of it. Nothing"
                    " changed; --force rebuilds anyway"
                )
            forced.append("fewer_skus")
            print(f"stocksync rebuild: going on despite --force: {why}", file=err)

        result = await rebuild_generation(settings, store, who=who, err=err, check=enough)
    finally:
        await store.close()
    old_ns = result.previous
    print(
        f"rebuilt the model from {result.messages:,} message(s): {result.skus:,} SKUs,"
        f" {result.orders:,} orders, {result.rmas:,} RMAs; {result.invalid:,} invalid event(s)"
        " skipped (the dead-letter topic has them)",
        file=out,
    )
    print(f"live generation: {result.generation} (keys under {result.namespace}:)", file=out)
    print(
        f"the previous model stays under {old_ns}: (keys {old_ns}:sku:*, {old_ns}:order:*,"
        f" {old_ns}:rma:*, {old_ns}:changes, {old_ns}:meta, {old_ns}:model); delete them once"
        " every API replica has switched",
        file=out,
    )
    audit(who, "rebuild", result.skus, generation=result.generation, previous=old_ns,
          messages=result.messages, forced=bool(forced))
    return result


def ask(question: str) -> bool:
    """Ask on the terminal; False when there is none."""
    if not sys.stdin.isatty():
        return False
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False
