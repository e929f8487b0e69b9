"""``stocksync rebuild``: recompute the whole read model from the source topics, then switch.

The model is rebuilt beside the live one and replaces it in one step:

1. refuse while the worker's consumer group has members (``--force`` skips
   the check): a worker writing the live model during a rebuild would be lost;
2. read the stock, orders and returns topics from their earliest offsets up
   to their end (a plain consumer, no group), and run the worker's own
   :class:`~stocksync.agents.pipeline.Translator` and
   :class:`~stocksync.agents.pipeline.Applier` over an in-memory store, the
   translators handing effects straight to the applier. Each batch runs at the
   produce time of its messages, so de-duplication windows and ``updated_at``
   are those of the events, not of the rebuild;
3. write every position, projection and order/RMA state into a fresh key
   space ``{namespace}:{generation}`` (pipelined, in pages), each SKU's
   version going on from the one it had in the live model, so versions and
   ETags never repeat;
4. set ``{namespace}:generation`` to the new generation (the switch, guarded
   by WATCH so two rebuilds cannot both win), then append a ``reload`` entry
   to the previous generation's change stream for processes following it.

The previous generation's keys are left in place for a rollback (set the
pointer back) and listed at the end, to be deleted once every API replica has
switched. Events that were invalid are counted, not dead-lettered again: the
worker sent them to the dead-letter topic when it first saw them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, TextIO

import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from redis.exceptions import RedisError, WatchError

from stocksync.agents.dlq import DeadLetterOut
from stocksync.agents.pipeline import Applier, SourceMessage, Translator
from stocksync.agents.topics import topic_names
from stocksync.codecs.projections import projection_encoder
from stocksync.codecs.state import position_decoder, state_encoder
from stocksync.config.settings import Settings
from stocksync.daemon.operate_io import (
    OperateError,
    Refused,
    audit,
    existing_topics,
    kafka_options,
    read_topics,
    redacted_url,
    redis_client,
)
from stocksync.readmodel import core
from stocksync.readmodel.generation import (
    GENERATION_FIELD,
    RELOAD_FIELD,
    effective_namespace,
    new_generation,
)
from stocksync.readmodel.keys import POSITION_FIELD, PROJECTION_FIELD, VERSION_FIELD, Keys
from stocksync.readmodel.store import MemoryStore

__all__ = ["RebuildResult", "active_workers", "ask", "rebuild"]

log = logging.getLogger("stocksync.operate")

#: Keys written per pipelined round trip.
_PAGE: Final = 1000
#: Seconds between progress lines when stderr is not a terminal.
_PROGRESS_EVERY: Final = 2.0
#: Consumer group states in which no worker holds partitions.
_IDLE_STATES: Final = frozenset({"Empty", "Dead"})


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
    """Hands effects straight to the applier; counts dead letters (already on the DLQ)."""

    def __init__(self, applier: Applier) -> None:
        self.applier = applier
        self.invalid = 0

    async def send_effects(self, batches: dict[int, bytes]) -> None:
        """Apply the effects now, in partition order."""
        await self.applier.process([batches[p] for p in sorted(batches)])

    async def send_dead_letters(self, letters: Sequence[DeadLetterOut]) -> None:
        """Count them: the worker dead-lettered them when it first saw them."""
        self.invalid += len(letters)


async def active_workers(settings: Settings) -> str | None:
    """Why the worker group looks active (a sentence), or None when it has no members."""
    group = settings.worker.group_id
    admin = AIOKafkaAdminClient(**kafka_options(settings), client_id="stocksync-operate")
    try:
        await admin.start()
        # One group per request: some brokers answer a mixed request with bytes that do
        # not decode once a group has members.
        responses = await admin.describe_consumer_groups([group])
    except (KafkaConnectionError, OSError) as exc:
        return f"the broker could not be asked about consumer group {group!r} ({exc})"
    except KafkaError as exc:
        return f"describing consumer group {group!r} failed ({exc!r})"
    finally:
        await admin.close()
    for response in responses:
        for entry in response.to_object()["groups"]:
            if entry["group"] != group:
                continue
            if entry["error_code"] != 0:
                return f"describing consumer group {group!r} failed (error {entry['error_code']})"
            members = entry["members"]
            if members or entry["state"] not in _IDLE_STATES:
                ids = ", ".join(str(m["member_id"]) for m in members) or "none listed"
                return (
                    f"consumer group {group!r} is {entry['state']} with {len(members)}"
                    f" member(s) ({ids})"
                )
            return None
    return f"the broker did not describe consumer group {group!r}"


class _Progress:
    """Progress on stderr: one line rewritten on a terminal, else a line every few seconds."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.tty = err.isatty()
        self.last = 0.0
        self.shown = ""

    def show(self, read: int, expected: int, skus: int, final: bool = False) -> None:
        """Report ``read`` of about ``expected`` messages."""
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.tty else _PROGRESS_EVERY):
            return
        share = f" ({min(100, read * 100 // expected)}%)" if expected else ""
        line = f"rebuild: read {read:,} of ~{expected:,} messages{share}, {skus:,} SKUs"
        if line == self.shown and not (final and self.tty):
            return
        self.last, self.shown = now, line
        if self.tty:
            self.err.write("\r" + line + ("\n" if final else ""))
        else:
            self.err.write(line + "\n")
        self.err.flush()


async def _replay_sources(settings: Settings, err: TextIO, result: RebuildResult) -> MemoryStore:
    names = topic_names(settings)
    present = await existing_topics(settings)
    if not any(topic in present for topic in names.sources):
        raise Refused(
            f"none of the source topics {', '.join(names.sources)} exists; check topic_prefix"
            " (STOCKSYNC_TOPIC_PREFIX) - rebuilding would switch to an empty model"
        )
    window_ms = int(settings.worker.dedup_window_hours * 3_600_000)
    store = MemoryStore()
    clock = _Clock()
    applier = Applier(
        store=store, topology=core.topology_of(settings), window_ms=window_ms, clock=clock
    )
    outbox = _DirectOutbox(applier)
    kinds = {names.stock: "stock", names.orders: "orders", names.returns: "returns"}
    translators = {
        kind: Translator(
            kind=kind,
            effects_partitions=1,  # effects never leave this process
            outbox=outbox,
            store=None if kind == "stock" else store,
            window_ms=window_ms,
            clock=clock,
        )
        for kind in kinds.values()
    }
    progress = _Progress(err)
    expected = 0
    async for records, seen in read_topics(settings, names.sources):
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
        progress.show(result.messages, expected, len(store.positions))
    progress.show(result.messages, max(expected, result.messages), len(store.positions), True)
    result.invalid = outbox.invalid
    return store


async def _write_generation(
    client: aioredis.Redis,
    keys: Keys,
    old: Keys,
    store: MemoryStore,
    settings: Settings,
    meta: dict[str, str],
) -> tuple[int, int, int]:
    """Write the store's model under ``keys``; returns (SKUs, orders, RMAs) written.

    A SKU's version goes on from its version in the ``old`` generation (the
    rebuilt version is added to it), so versions, and the API's ETags made
    from them, never repeat or go backwards across a rebuild.
    """
    topology = core.topology_of(settings)
    skus = list(store.positions)
    for start in range(0, len(skus), _PAGE):
        page = skus[start : start + _PAGE]
        async with client.pipeline(transaction=False) as pipe:
            for sku in page:
                pipe.hget(old.sku(sku), VERSION_FIELD)
            before = await pipe.execute()
        async with client.pipeline(transaction=False) as pipe:
            for sku, raw in zip(page, before, strict=True):
                version = store.versions[sku]
                position, projection = store.positions[sku], store.projections[sku]
                if raw is not None and int(raw) > 0:
                    moved = position_decoder.decode(position)
                    moved.version += int(raw)
                    version = moved.version
                    position = state_encoder.encode(moved)
                    projection = projection_encoder.encode(core.project(moved, topology))
                pipe.hset(
                    keys.sku(sku),
                    mapping={
                        VERSION_FIELD: str(version),
                        POSITION_FIELD: position,
                        PROJECTION_FIELD: projection,
                    },
                )
            await pipe.execute()
    ttl = settings.worker.state_ttl_days * 86_400
    states = list(store.states.items())
    orders = rmas = 0
    for start in range(0, len(states), _PAGE):
        async with client.pipeline(transaction=False) as pipe:
            for name, value in states[start : start + _PAGE]:
                kind, _, ident = name.partition(":")
                if kind == "order":
                    pipe.set(keys.order(ident), value, ex=ttl)
                    orders += 1
                else:
                    pipe.set(keys.rma(ident), value, ex=ttl)
                    rmas += 1
            await pipe.execute()
    async with client.pipeline(transaction=False) as pipe:
        for field, text in meta.items():
            pipe.hset(keys.meta(), field, text)
        await pipe.execute()
    return len(skus), orders, rmas


async def _switch(
    client: aioredis.Redis,
    base: Keys,
    previous: bytes | None,
    generation: str,
    old_ns: str,
    new_ns: str,
    maxlen: int,
) -> None:
    """Point the base namespace at ``generation`` unless someone switched it meanwhile."""
    pointer = base.generation()
    try:
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch(pointer)
            current = await pipe.get(pointer)
            if current != previous:
                raise OperateError(
                    f"another rebuild switched the model to {current!r} meanwhile; this"
                    f" rebuild's keys stay under {new_ns}: and are not live"
                )
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set(pointer, generation)
            await pipe.execute()
    except WatchError:
        raise OperateError(
            f"the generation pointer {pointer} changed during the switch; this rebuild's keys"
            f" stay under {new_ns}: and are not live"
        ) from None
    await client.xadd(
        Keys(old_ns).changes(),
        {RELOAD_FIELD: new_ns, GENERATION_FIELD: generation},
        maxlen=maxlen,
        approximate=True,
    )


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
    busy = await active_workers(settings)
    if busy is not None:
        if not force:
            raise Refused(
                f"{busy}. Stop every `stocksync worker` first (a worker writing the live model"
                " during a rebuild would have its writes lost), then run rebuild again; --force"
                " skips this check"
            )
        print(f"stocksync rebuild: going on despite --force: {busy}", file=err)
    base = Keys(settings.redis_namespace)
    client = redis_client(settings)
    result = RebuildResult()
    try:
        try:
            raw = await client.get(base.generation())
        except (RedisError, OSError) as exc:
            raise OperateError(
                f"Redis at {redacted_url(settings.redis_url)!r} failed: {exc}"
            ) from exc
        previous = raw.encode() if isinstance(raw, str) else raw
        old_ns = effective_namespace(
            settings.redis_namespace, previous.decode() if previous is not None else None
        )
        if not yes:
            question = (
                f"Rebuild the read model (now under {old_ns!r}) from"
                f" {', '.join(topic_names(settings).sources)}? [y/N] "
            )
            if confirm is None or not confirm(question):
                raise Refused("not confirmed; nothing changed (use --yes to skip the question)")
        started = datetime.now(UTC)
        # The worker logged every invalid event when it first saw it; do not repeat them all.
        pipeline_log = logging.getLogger("stocksync.pipeline")
        level = pipeline_log.level
        pipeline_log.setLevel(logging.ERROR)
        try:
            store = await _replay_sources(settings, err, result)
        finally:
            pipeline_log.setLevel(level)
        generation = new_generation()
        new_ns = effective_namespace(settings.redis_namespace, generation)
        meta = {
            "generation": generation,
            "rebuilt_at": started.isoformat().replace("+00:00", "Z"),
            "rebuilt_by": who,
            "messages": str(result.messages),
            "previous": old_ns,
            "topics": json.dumps(list(topic_names(settings).sources)),
        }
        try:
            result.skus, result.orders, result.rmas = await _write_generation(
                client, Keys(new_ns), Keys(old_ns), store, settings, meta
            )
            await _switch(
                client, base, previous, generation, old_ns, new_ns,
                settings.worker.changes_maxlen,
            )
        except (RedisError, OSError) as exc:
            raise OperateError(
                f"writing the new model under {new_ns}: failed ({exc}); the live model is"
                f" unchanged under {old_ns}:"
            ) from exc
        result.generation, result.namespace, result.previous = generation, new_ns, old_ns
    finally:
        await client.aclose()
    print(
        f"rebuilt the model from {result.messages:,} message(s): {result.skus:,} SKUs,"
        f" {result.orders:,} orders, {result.rmas:,} RMAs; {result.invalid:,} invalid event(s)"
        " skipped (the dead-letter topic has them)",
        file=out,
    )
    print(f"live generation: {generation} (keys under {new_ns}:)", file=out)
    print(
        f"the previous model stays under {old_ns}: (keys {old_ns}:sku:*, {old_ns}:order:*,"
        f" {old_ns}:rma:*, {old_ns}:changes, {old_ns}:meta); delete them once every API"
        " replica has switched",
        file=out,
    )
    audit(who, "rebuild", result.skus, generation=generation, previous=old_ns,
          messages=result.messages, forced=force and busy is not None)
    return result


def ask(question: str) -> bool:
    """Ask on the terminal; False when there is none."""
    if not sys.stdin.isatty():
        return False
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False
