"""Saving what changed: ``save_saga(state, expected, base)`` against both stores.

The Mongo store writes a transition as an update of the fields it changed (``$set`` of
fields and step fields, ``$push`` of history entries with ``$slice`` for the cap, ``$set``
of a counted repeat's entry), conditional on the revision. Whatever it writes, the stored
document must come back as the state given, exactly as a whole-document replace would have
left it. The states here come from the engine itself, so they share what it shares.
These bodies use standard MongoDB operators only, so they pass against a real mongod too.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Literal

import bson
import pytest

from coordinator.adapters import InMemorySagaStore, MongoSagaStore, as_stored
from coordinator.adapters.mongo_updates import saga_update
from coordinator.engine.engine import Options, handle, start
from coordinator.engine.messages import (
    Input,
    ReplyReceived,
    SagaStarted,
    TimerFired,
    TriggerRepeated,
)
from coordinator.engine.state import SagaState
from coordinator.errors import UnstorableData
from coordinator.ports import SagaStore
from schemas.definition import SagaDefinition
from schemas.envelope import FailedReply, ReplyError, SucceededReply

T0 = datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)

DEFINITION = SagaDefinition.model_validate(
    {
        "name": "trip",
        "version": 1,
        "trigger": {"event": "trip.booked", "key": "${event.id}"},
        "timeout": "10m",
        "steps": [
            {
                "name": "flight",
                "participant": "air",
                "command": "book",
                "input": {"id": "${input.id}"},
                "timeout": "30s",
                "compensation": {"command": "cancel"},
            },
            {
                "name": "hotel",
                "participant": "rooms",
                "command": "book",
                "timeout": "30s",
                "retry": {"max_attempts": 3, "backoff": "1s"},
                "compensation": {"command": "cancel"},
            },
            {"name": "car", "participant": "cars", "command": "rent", "timeout": "30s"},
        ],
    }
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ok(
    step: str,
    seconds: float,
    kind: Literal["action", "compensation"] = "action",
    attempt: int = 1,
) -> ReplyReceived:
    reply = SucceededReply(status="succeeded", output={"step": step, "n": 1})
    return ReplyReceived(step, kind, attempt, reply, at(seconds), message_id=f"r-{seconds}")


def failed(step: str, seconds: float, retryable: bool, attempt: int = 1) -> ReplyReceived:
    error = ReplyError(code="no", message="declined", retryable=retryable)
    reply = FailedReply(status="failed", error=error)
    return ReplyReceived(step, "action", attempt, reply, at(seconds), message_id=f"f-{seconds}")


def repeat(seconds: float) -> TriggerRepeated:
    return TriggerRepeated(at=at(seconds), source="event:trip.booked", message_id="again")


RUNS: dict[str, list[Input]] = {
    "completes": [ok("flight", 1), ok("hotel", 2), ok("car", 3)],
    "retries then compensates": [
        ok("flight", 1),
        failed("hotel", 2, retryable=True),
        TimerFired(at(4)),
        failed("hotel", 5, retryable=False, attempt=2),
        ok("flight", 6, kind="compensation"),
    ],
    "repeats are counted in place": [
        repeat(1),
        repeat(2),
        ok("flight", 3),
        repeat(4),
        TimerFired(at(40)),
    ],
}


def states(messages: list[Input], history_limit: int) -> list[SagaState]:
    """The engine's states for ``messages``, each computed from the one before."""
    options = Options(history_limit=history_limit)
    started = SagaStarted("s-1", "k-1", {"id": "t-1", "x": 1.5}, T0, "event:trip.booked", "m-1")
    state = start(DEFINITION, started, options=options, random=random.Random(1).random).state
    found = [state]
    for message in messages:
        transition = handle(DEFINITION, state, message, options=options, random=lambda: 0.5)
        if transition.changed:
            state = transition.state
            found.append(state)
    return found


@pytest.mark.parametrize("history_limit", [1000, 3])
@pytest.mark.parametrize("run", sorted(RUNS))
async def test_every_transition_saved_from_its_base_comes_back_exactly(
    store: SagaStore, run: str, history_limit: int
) -> None:
    sequence = states(RUNS[run], history_limit)
    assert len(sequence) == len(RUNS[run]) + 1
    await store.insert_saga(sequence[0])
    for base, new in itertools.pairwise(sequence):
        assert await store.save_saga(new, base.revision, base=base) is True
        assert await store.load_saga(new.id) == as_stored(new)
    if history_limit == 3:
        assert sequence[-1].history_dropped > 0


async def test_a_base_from_the_store_works_as_well_as_the_engines(store: SagaStore) -> None:
    sequence = states(RUNS["completes"], 1000)
    await store.insert_saga(sequence[0])
    for new in sequence[1:]:
        loaded = await store.load_saga(new.id)
        assert loaded is not None
        again = handle(DEFINITION, loaded, RUNS["completes"][new.revision - 2], random=lambda: 0.5)
        assert await store.save_saga(again.state, loaded.revision, base=loaded) is True
        assert await store.load_saga(new.id) == as_stored(again.state)


async def test_the_revision_check_holds_for_updates(store: SagaStore) -> None:
    first, second, third = states(RUNS["completes"], 1000)[:3]
    await store.insert_saga(first)
    assert await store.save_saga(second, 0, base=first) is False  # first is revision 1
    assert await store.save_saga(second, 1, base=first) is True
    assert await store.save_saga(second, 1, base=first) is False
    assert await store.save_saga(third, 2, base=second) is True
    assert await store.load_saga("s-1") == as_stored(third)


async def test_of_two_updates_from_one_base_exactly_one_wins(store: SagaStore) -> None:
    base = states([], 1000)[0]
    await store.insert_saga(base)
    a = handle(DEFINITION, base, ok("flight", 1), random=lambda: 0.5).state
    b = handle(DEFINITION, base, failed("flight", 1, retryable=False), random=lambda: 0.5).state
    results = await asyncio.gather(
        store.save_saga(a, base.revision, base=base), store.save_saga(b, base.revision, base=base)
    )
    assert sorted(results) == [False, True]
    assert await store.load_saga("s-1") == as_stored(a if results[0] else b)


async def test_the_size_budget_counts_the_whole_document_not_the_update(
    store: SagaStore,
) -> None:
    base, new = states(RUNS["completes"], 1000)[:2]
    limit = len(bson.encode(base.to_document())) + 600
    grown = new.model_copy(
        update={
            "steps": [
                new.steps[0].model_copy(update={"output": {"blob": "y" * 1000}}),
                *new.steps[1:],
            ]
        }
    )
    assert (
        len(bson.encode(saga_update(base, grown))) < limit < len(bson.encode(grown.to_document()))
    )
    if isinstance(store, InMemorySagaStore):
        store.max_saga_bytes = limit
    else:
        assert isinstance(store, MongoSagaStore)
        store._max_saga_bytes = limit
    await store.insert_saga(base)
    with pytest.raises(UnstorableData, match="budget"):
        await store.save_saga(grown, base.revision, base=base)
    assert await store.load_saga("s-1") == as_stored(base)


@pytest.mark.integration
async def test_an_update_the_server_refuses_is_tried_as_a_replace(
    mongo_store: MongoSagaStore,
) -> None:
    store = mongo_store
    sequence = states(RUNS["completes"], 1000)
    base, new = sequence[0], sequence[1]
    await store.insert_saga(base)
    # A dotted or $-prefixed key inside a value: whatever the server makes of it in an
    # update, the outcome is what a replace gives (stored, or refused as unstorable).
    odd = new.model_copy(
        update={
            "steps": [
                new.steps[0].model_copy(update={"output": {"a.b": 1, "$c": 2}}),
                *new.steps[1:],
            ]
        }
    )
    try:
        saved = await store.save_saga(odd, base.revision, base=base)
    except UnstorableData:
        assert await store.load_saga("s-1") == as_stored(base)
    else:
        assert saved is True
        assert await store.load_saga("s-1") == as_stored(odd)


@pytest.mark.integration
async def test_a_timer_claim_is_replaced_by_the_transitions_wake_at(
    mongo_store: MongoSagaStore,
) -> None:
    store = mongo_store
    base, new = states(RUNS["completes"], 1000)[:2]
    assert base.wake_at is not None and new.wake_at is not None
    await store.insert_saga(base)
    claimed = await store.claim_due(base.wake_at, timedelta(minutes=5), limit=10)
    assert [state.id for state in claimed] == ["s-1"]
    # A transition computed from the state before the claim: its wake_at wins, as before.
    assert await store.save_saga(new, base.revision, base=base) is True
    assert await store.load_saga("s-1") == as_stored(new)


@pytest.mark.integration
async def test_cleared_outbox_entries_stay_cleared_when_a_save_leaves_the_outbox(
    mongo_store: MongoSagaStore,
) -> None:
    store = mongo_store
    base = states([], 1000)[0]
    assert len(base.outbox) == 1
    await store.insert_saga(base)
    await store.clear_outbox([("s-1", base.outbox[0].message_id)])
    repeated = handle(DEFINITION, base, repeat(1), random=lambda: 0.5).state
    assert repeated.outbox == base.outbox
    assert await store.save_saga(repeated, base.revision, base=base) is True
    loaded = await store.load_saga("s-1")
    assert loaded is not None
    assert loaded.outbox == []  # a replace would have put the published command back
    assert loaded == as_stored(repeated.model_copy(update={"outbox": []}))


async def test_concurrent_updates_keep_their_own_outcomes(store: SagaStore) -> None:
    bases = [
        states([], 1000)[0].model_copy(update={"id": f"s-{index}", "key": f"k-{index}"})
        for index in range(12)
    ]
    for base in bases:
        await store.insert_saga(base)
    moved = [handle(DEFINITION, base, ok("flight", 1), random=lambda: 0.5).state for base in bases]
    outcomes = await asyncio.gather(
        *(
            store.save_saga(new, base.revision, base=base)
            for base, new in zip(bases, moved, strict=True)
        ),
        *(
            store.save_saga(new, base.revision + 3, base=base)
            for base, new in zip(bases[:2], moved[:2], strict=True)
        ),
    )
    assert outcomes == [True] * 12 + [False] * 2
    for new in moved:
        assert await store.load_saga(new.id) == as_stored(new)
