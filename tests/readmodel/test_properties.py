"""Property tests of the pure core against the contract's brute-force oracle.

Scenarios (:mod:`.scenarios`) mix 2-3 SKUs, 3 nodes, two channels, a few
orders and RMAs with wandering lifecycles (invalid steps included), snapshots
with colliding and out-of-order ``as_of``, policies, and exact producer
copies, and the cases of the contract's clarifications (see :mod:`.scenarios`).
Hypothesis runs derandomized, so a run is reproducible as is; a
failure prints the falsifying scenario and the ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import random
from collections import defaultdict

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stocksync.codecs.effects import Effect, EffectBatch, batch_decoder, batch_encoder
from stocksync.codecs.events import Event
from stocksync.codecs.messages import decode_message
from stocksync.codecs.projections import projection_decoder, projection_encoder
from stocksync.codecs.state import (
    OrderState,
    Position,
    RmaState,
    position_decoder,
    state_encoder,
)
from stocksync.readmodel.core import SourceRef, Topology, apply_effects, copy_position, project
from tests.readmodel.memory_worker import NOW_MS, WINDOW_MS, MemoryWorker, build_model, pack
from tests.readmodel.oracle import APPLIED, DUPLICATE, Model, expected_model, key_group
from tests.readmodel.scenarios import (
    NODES,
    POISONS,
    interleave,
    keyed_scenarios,
    poisoned,
    poisons,
    scenarios,
)

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: How many events each source message carries, cycled: 1 is a plain message, more a bulk one.
SIZES = st.lists(st.integers(1, 4), max_size=4)
SEED = st.integers(0, 2**32)
Scenario = tuple[Topology, tuple[str, ...], list[Event]]
KeyedScenario = tuple[Topology, tuple[str, ...], list[list[Event]]]
Sizes = list[int]
PICK = st.integers(0, 2**32)


def figures(model: Model) -> tuple[object, object]:
    """The read model without the verdicts."""
    return model.nodes, model.channels


def per_key(events: list[Event], verdicts: list[str]) -> dict[tuple[str, str], list[str]]:
    """Verdicts grouped by the key their event travels under, in arrival order."""
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for event, verdict in zip(events, verdicts, strict=True):
        grouped[key_group(event)].append(verdict)
    return dict(grouped)


def without_version(position: Position) -> Position:
    """A position's content, leaving out the version and time of its last write."""
    return msgspec.structs.replace(position, version=0, updated_at=0)


@PROPERTY
@given(scenarios(), SIZES)
def test_memory_worker_equals_the_contract_oracle(scenario: Scenario, sizes: Sizes) -> None:
    topology, skus, events = scenario
    expected = expected_model(events, topology, skus, NODES)
    assert build_model(events, topology, skus, NODES, sizes=sizes) == expected


@PROPERTY
@given(keyed_scenarios(), SEED, SEED, SIZES)
def test_any_interleaving_across_keys_gives_the_same_model(
    keyed: KeyedScenario, first: int, second: int, sizes: Sizes
) -> None:
    topology, skus, by_key = keyed
    one, other = interleave(by_key, first), interleave(by_key, second)
    model = build_model(one, topology, skus, NODES, sizes=sizes)
    again = build_model(other, topology, skus, NODES)
    assert figures(again) == figures(model)
    assert per_key(other, again.verdicts) == per_key(one, model.verdicts)


@PROPERTY
@given(scenarios(), SIZES, st.lists(st.tuples(PICK, PICK, PICK), min_size=1, max_size=3))
def test_redelivery_with_the_same_offsets_changes_nothing(
    scenario: Scenario, sizes: Sizes, replays: list[tuple[int, int, int]]
) -> None:
    """Consumers restart from an older committed offset: a partition's records come again."""
    topology, skus, events = scenario
    messages = pack(events, sizes)
    worker = MemoryWorker(topology)
    records: dict[tuple[str, int], list[tuple[list[Event], list[SourceRef]]]] = defaultdict(list)
    when = {pick % max(1, len(messages)): (which, back) for pick, which, back in replays}
    verdicts = []
    for step, message in enumerate(messages):
        delivered = worker.deliver_message(message)
        verdicts += [verdict for _, verdict in delivered]
        ref = delivered[0][0]
        records[(ref.kind, ref.partition)].append((message, [r for r, _ in delivered]))
        if step in when:
            which, back = when[step]
            partition = sorted(records)[which % len(records)]
            log = records[partition]
            for again, refs in log[len(log) - 1 - back % len(log):]:
                for event, where in zip(again, refs, strict=True):
                    assert worker.deliver(event, where) in {DUPLICATE} | _rejections(verdicts)
    once = build_model(events, topology, skus, NODES, sizes=sizes)
    assert worker.model(skus, NODES, verdicts) == once


def _rejections(verdicts: list[str]) -> set[str]:
    """A record rejected the first time is rejected again (or skipped): never applied."""
    return {v for v in verdicts if v not in {APPLIED, DUPLICATE}}


@PROPERTY
@given(scenarios(), PICK, PICK, SIZES)
def test_producer_duplicate_with_a_new_offset_equals_applying_once(
    scenario: Scenario, pick: int, place: int, sizes: Sizes
) -> None:
    topology, skus, events = scenario
    if not events:
        return
    original = pick % len(events)
    later = original + 1 + place % len(events[original:])
    with_copy = [*events[:later], events[original], *events[later:]]
    model = build_model(with_copy, topology, skus, NODES, sizes=sizes)
    assert model == expected_model(with_copy, topology, skus, NODES)
    once = build_model(events, topology, skus, NODES, sizes=sizes)
    if once.verdicts[original] in {APPLIED, DUPLICATE}:
        assert model.verdicts[later] == DUPLICATE
        assert figures(model) == figures(once)


def _sent_by_sku(scenario: Scenario, sizes: Sizes) -> tuple[MemoryWorker, dict[str, list[Effect]]]:
    """Every effect the translators sent for a scenario, by SKU, and the worker that sent them."""
    topology, _, events = scenario
    worker = MemoryWorker(topology)
    for message in pack(events, sizes):
        worker.deliver_message(message)
    by_sku: dict[str, list[Effect]] = defaultdict(list)
    for effect in worker.sent:
        by_sku[effect.sku].append(effect)
    return worker, by_sku


@PROPERTY
@given(scenarios(), SIZES, st.lists(st.integers(1, 5), min_size=1, max_size=6), PICK)
def test_folding_a_batch_equals_applying_one_by_one_and_replay_changes_nothing(
    scenario: Scenario, sizes: Sizes, chunks: list[int], pick: int
) -> None:
    worker, by_sku = _sent_by_sku(scenario, sizes)
    for sku, effects in by_sku.items():
        batch, single, chunked = Position(sku=sku), Position(sku=sku), Position(sku=sku)
        applied, skipped = apply_effects(batch, effects, NOW_MS, WINDOW_MS)
        assert applied + skipped == len(effects)
        for effect in effects:
            apply_effects(single, [effect], NOW_MS, WINDOW_MS)
        start = 0
        for size in (chunks * len(effects))[: len(effects)]:
            apply_effects(chunked, effects[start:start + size], NOW_MS, WINDOW_MS)
            start += size
        apply_effects(chunked, effects[start:], NOW_MS, WINDOW_MS)
        expected = without_version(worker.positions[sku])
        assert without_version(batch) == without_version(single) == without_version(chunked)
        assert without_version(batch) == expected
        assert batch.version == (1 if applied else 0)

        # Crash replay: the effects topic redelivers from an older offset.
        before = copy_position(batch)
        from_here = pick % len(effects)
        assert apply_effects(batch, effects[from_here:], NOW_MS + 1, WINDOW_MS) == (
            0, len(effects) - from_here
        )
        assert batch == before


@PROPERTY
@given(scenarios(), SIZES, st.tuples(PICK, PICK, PICK, PICK))
def test_crash_and_restart_from_older_checkpoints_gives_the_same_model(
    scenario: Scenario, sizes: Sizes, picks: tuple[int, int, int, int]
) -> None:
    """Translators lose their unsaved states and the applier its unsaved positions; both
    resume from committed offsets at or before what they saved, so records and effects come
    again (DESIGN, "Exactly-once effects")."""
    topology, skus, events = scenario
    messages = pack(events, sizes)
    states_at, positions_at = (pick % (len(messages) + 1) for pick in picks[:2])
    source_from = picks[2] % (states_at + 1)
    effects_from_step = picks[3] % (positions_at + 1)
    worker = MemoryWorker(topology)
    delivered: list[tuple[list[Event], list[SourceRef]]] = []
    sent_before: list[int] = []
    saved_states: dict[tuple[str, str], OrderState | RmaState] = {}
    saved_positions: dict[str, Position] = {}
    for step in range(len(messages) + 1):
        sent_before.append(len(worker.sent))
        if step == states_at:
            saved_states, _ = worker.checkpoint()
        if step == positions_at:
            _, saved_positions = worker.checkpoint()
        if step < len(messages):
            refs = [ref for ref, _ in worker.deliver_message(messages[step])]
            delivered.append((messages[step], refs))
    before = worker.model(skus, NODES, [])

    worker.states, worker.positions = saved_states, saved_positions
    worker.apply(worker.sent[sent_before[effects_from_step]:])  # the effects topic, again
    for message, refs in delivered[source_from:]:                   # the source topics, again
        for event, where in zip(message, refs, strict=True):
            worker.deliver(event, where)
    assert worker.model(skus, NODES, []) == before


@PROPERTY
@given(scenarios(), SIZES)
def test_encode_decode_round_trips_lose_nothing(scenario: Scenario, sizes: Sizes) -> None:
    topology, skus, events = scenario
    for event in events:
        [(_, decoded, _)] = decode_message(msgspec.json.encode(event)).events
        assert decoded == event
    if events:
        bulk = decode_message(msgspec.json.encode(events))
        assert [decoded for _, decoded, _ in bulk.events] == events

    worker, by_sku = _sent_by_sku((topology, skus, events), sizes)
    for state in worker.states.values():
        kind = OrderState if isinstance(state, OrderState) else RmaState
        assert msgspec.msgpack.decode(state_encoder.encode(state), type=kind) == state
    for sku, position in worker.positions.items():
        assert position_decoder.decode(state_encoder.encode(position)) == position
        projection = project(position, topology)
        assert projection_decoder.decode(projection_encoder.encode(projection)) == projection
        batch = EffectBatch(by_sku[sku])
        assert batch_decoder.decode(batch_encoder.encode(batch)) == batch
    everything = EffectBatch(worker.sent)
    assert batch_decoder.decode(batch_encoder.encode(everything)) == everything


@PROPERTY
@given(keyed_scenarios(), SEED, SEED)
def test_stock_events_in_any_order_give_the_same_figures(
    keyed: KeyedScenario, first: int, second: int
) -> None:
    """Stock semantics do not depend on arrival order (a bulk export may carry any key):
    ties of ``as_of`` and ``occurred_at`` go to the greater (``source``, ``event_id``)."""
    topology, skus, by_key = keyed
    shuffled = [
        random.Random(second + k).sample(steps, len(steps))
        if key_group(steps[0])[0] == "stock" else steps
        for k, steps in enumerate(by_key)
    ]
    one, other = interleave(by_key, first), interleave(shuffled, first)
    model = build_model(one, topology, skus, NODES)
    assert model == expected_model(one, topology, skus, NODES)
    assert figures(build_model(other, topology, skus, NODES)) == figures(model)


@PROPERTY
@given(scenarios(), SIZES, poisons())
def test_spoiled_bytes_among_valid_events_are_rejected_and_change_nothing(
    scenario: Scenario, sizes: Sizes, spoils: list[tuple[int, int, str]]
) -> None:
    """Invalid UTF-8 in an ignored field, nesting past 64 in one, a ``+0530`` offset, a UTC
    year past 9999 and a quantity past 10^9, put among the valid events of the messages."""
    topology, skus, events = scenario
    messages = pack(events, sizes)
    if not messages:
        return
    values: list[list[bytes]] = [[msgspec.json.encode(e) for e in m] for m in messages]
    standalone: dict[int, list[tuple[bytes, str]]] = defaultdict(list)
    for pick, place, poison in spoils:
        at = pick % len(messages)
        spoiled = poisoned(messages[at][place % len(messages[at])], poison)
        if poison == "utf8":  # spoils any message it is in: sent on its own
            standalone[at].append((spoiled, POISONS[poison]))
        else:
            values[at].insert(place % (len(values[at]) + 1), spoiled)
    worker = MemoryWorker(topology)
    verdicts: list[str] = []
    for at, (message, elements) in enumerate(zip(messages, values, strict=True)):
        for spoiled, reason in standalone[at]:
            decoded = decode_message(spoiled)
            assert (decoded.events, [r.reason for r in decoded.rejections]) == ([], [reason])
        bulk = len(elements) > 1
        value = b"[" + b",".join(elements) + b"]" if bulk else elements[0]
        decoded = decode_message(value)
        assert [event for _, event, _ in decoded.events] == message
        assert len(decoded.rejections) == len(elements) - len(message)
        assert all(r.reason in POISONS.values() for r in decoded.rejections)
        verdicts += [verdict for _, verdict in worker.deliver_message(message)]
    assert worker.model(skus, NODES, verdicts) == expected_model(events, topology, skus, NODES)
