"""The ``SagaStore`` contract, run against the in-memory double and MongoDB alike.

The ``mongo`` variant carries the ``integration`` marker and gets a fresh database per test
(the ``mongo`` and ``database_name`` fixtures of ``tests/conftest.py``). These bodies use only
standard MongoDB features, so they pass against SecantusDB and a real mongod alike.

Datetimes: a store gives states back at BSON precision (``as_stored``): UTC-aware and
truncated to the millisecond. States built here use millisecond UTC datetimes, so they come
back exactly equal; ``test_datetimes_come_back_at_bson_precision`` pins the rest.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, IndexModel

from coordinator.adapters import (
    InMemorySagaStore,
    MongoSagaStore,
    RoundTripCounter,
    as_stored,
)
from coordinator.engine.state import Command, HistoryEntry, SagaState, StepState
from coordinator.errors import (
    DefinitionConflict,
    DefinitionUnloadable,
    StoreUnavailable,
    UnstorableData,
)
from coordinator.ports import DuplicateSaga, SagaStore
from schemas.definition import SagaDefinition
from tests.conftest import free_port

T0 = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def definition(version: int = 1, *, description: str = "", name: str = "order") -> SagaDefinition:
    return SagaDefinition.model_validate(
        {
            "name": name,
            "version": version,
            "description": description,
            "trigger": {"event": "order.placed", "key": "${event.order_id}"},
            "timeout": "10m",
            "steps": [
                {
                    "name": "reserve",
                    "participant": "inventory",
                    "command": "reserve",
                    "input": {"order_id": "${input.order_id}"},
                    "compensation": {"command": "release", "retry": {"max_attempts": 5}},
                },
                {"name": "ship", "participant": "shipping", "command": "ship", "pivot": True},
            ],
        }
    )


def command(message_id: str, when: datetime = T0) -> Command:
    return Command(
        message_id=message_id,
        routing_key="inventory.reserve",
        type="reserve",
        reply_to="coordinator",
        timestamp=when,
        headers={"x-saga-id": "s", "x-saga-attempt": 1},
        body={"order_id": "o-1", "items": [{"sku": "a", "qty": 2}]},
    )


def saga(
    saga_id: str,
    *,
    key: str | None = None,
    definition_name: str = "order",
    wake_at: datetime | None = None,
    outbox: list[Command] | None = None,
    updated_at: datetime = T0,
    revision: int = 0,
) -> SagaState:
    return SagaState(
        id=saga_id,
        definition=definition_name,
        definition_version=1,
        key=key,
        input={"order_id": "o-1", "total": 12.5, "tags": ["a", "b"], "nested": {"x": None}},
        steps=[StepState(name="reserve"), StepState(name="ship")],
        created_at=T0,
        updated_at=updated_at,
        deadline=at(600),
        wake_at=wake_at,
        revision=revision,
        outbox=outbox or [],
        history=[HistoryEntry(at=T0, event="saga.started", status="running")],
    )


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture
def counter() -> RoundTripCounter:
    return RoundTripCounter()


@pytest.fixture
async def counted(
    mongo: AsyncMongoClient[Any], mongodb_url: str, database_name: str, counter: RoundTripCounter
) -> AsyncIterator[MongoSagaStore]:
    """A Mongo store whose client counts round trips (``mongo`` drops the database)."""
    store = MongoSagaStore.connect(mongodb_url, database_name, counter=counter)
    try:
        await store.ensure_indexes()
        await store.ping()
        yield store
    finally:
        await store.close()


# -- definitions ------------------------------------------------------------------------
async def test_register_new_identical_and_conflict(store: SagaStore) -> None:
    assert await store.register_definition(definition(), "source: 1") == "created"
    assert await store.register_definition(definition(), "other text, same content") == (
        "identical"
    )
    with pytest.raises(DefinitionConflict) as caught:
        await store.register_definition(definition(description="changed"), "source: 2")
    assert (caught.value.name, caught.value.version) == ("order", 1)

    stored = await store.get_definition("order", 1)
    assert stored is not None
    assert stored.definition == definition()
    assert stored.source == "source: 1"
    assert len(stored.content_hash) == 64
    assert stored.registered_at.tzinfo is not None


async def test_latest_and_versions(store: SagaStore) -> None:
    for version in (2, 1, 3):
        await store.register_definition(definition(version), f"v{version}")
    await store.register_definition(definition(1, name="refund"), "refund v1")

    latest = await store.get_definition("order")
    assert latest is not None and latest.definition.version == 3
    assert [d.definition.version for d in await store.definition_versions("order")] == [1, 2, 3]
    assert [
        (d.definition.name, d.definition.version) for d in await store.latest_definitions()
    ] == [
        ("order", 3),
        ("refund", 1),
    ]
    assert await store.get_definition("order", 4) is None
    assert await store.get_definition("unknown") is None
    assert await store.definition_versions("unknown") == []


@pytest.mark.integration
async def test_definitions_are_shared_between_store_instances(
    mongo: AsyncMongoClient[Any], database_name: str
) -> None:
    first, second = (MongoSagaStore(mongo, database_name) for _ in range(2))
    await first.ensure_indexes()
    assert await first.register_definition(definition(), "a") == "created"
    assert await second.register_definition(definition(), "b") == "identical"
    with pytest.raises(DefinitionConflict):
        await second.register_definition(definition(description="x"), "c")


async def test_retire_marks_every_version_until_a_new_one(store: SagaStore) -> None:
    assert await store.retire_definition("order") is False
    await store.register_definition(definition(1), "a")
    await store.register_definition(definition(2), "b")
    await store.register_definition(definition(1, name="other"), "c")
    assert await store.retire_definition("order") is True
    latest = {d.definition.name: d for d in await store.latest_definitions()}
    assert latest["order"].retired and not latest["other"].retired
    assert all(d.retired for d in await store.definition_versions("order"))
    await store.register_definition(definition(3), "d")
    again = await store.get_definition("order")
    assert again is not None and again.definition.version == 3 and not again.retired
    assert await store.trigger_events() == {"order.placed"}


@pytest.mark.integration
async def test_a_stored_definition_that_no_longer_loads_never_stops_the_others(
    counted: MongoSagaStore, mongo: Any
) -> None:
    await counted.register_definition(definition(1, name="good"), "a")
    # As registered by an earlier release whose rules were looser: it fails validation now.
    bad = definition(1, name="bad").model_dump(mode="json")
    bad["steps"][0]["retry"] = {"max_attempts": 0}
    bad["trigger"]["event"] = "bad.happened"
    await mongo[counted._db.name]["definitions"].insert_one(
        {
            "_id": "bad@1",
            "name": "bad",
            "version": 1,
            "content_hash": "x",
            "source": "…",
            "definition": bad,
            "registered_at": T0,
        }
    )
    assert [d.definition.name for d in await counted.latest_definitions()] == ["good"]
    assert await counted.definition_versions("bad") == []
    with pytest.raises(DefinitionUnloadable, match="'bad' version 1 does not load"):
        await counted.get_definition("bad")
    assert "bad.happened" in await counted.trigger_events()  # so its binding can go


# -- instances --------------------------------------------------------------------------
async def test_insert_and_load_round_trip_exactly(store: SagaStore) -> None:
    state = saga("s-1", key="o-1", wake_at=at(30), outbox=[command("m-1")])
    await store.insert_saga(state)
    assert await store.load_saga("s-1") == state
    assert await store.load_saga("missing") is None


async def test_find_by_definition_and_key(store: SagaStore) -> None:
    state = saga("s-1", key="o-1")
    await store.insert_saga(state)
    await store.insert_saga(saga("s-2", key="o-2"))
    assert await store.find_saga(state.definition, "o-1") == state
    assert await store.find_saga(state.definition, "o-3") is None
    assert await store.find_saga("other", "o-1") is None


async def test_duplicate_key_raises_with_the_existing_instance(store: SagaStore) -> None:
    first = saga("s-1", key="o-1")
    await store.insert_saga(first)
    with pytest.raises(DuplicateSaga) as caught:
        await store.insert_saga(saga("s-2", key="o-1"))
    assert caught.value.existing == first
    assert await store.load_saga("s-2") is None
    # The same key under another definition is another business.
    await store.insert_saga(saga("s-3", key="o-1", definition_name="refund"))


async def test_duplicate_id_raises_with_the_existing_instance(store: SagaStore) -> None:
    first = saga("s-1")
    await store.insert_saga(first)
    with pytest.raises(DuplicateSaga) as caught:
        await store.insert_saga(saga("s-1", key="other"))
    assert caught.value.existing == first


async def test_keyless_sagas_never_collide(store: SagaStore) -> None:
    for index in range(3):
        await store.insert_saga(saga(f"s-{index}"))
    for index in range(3):
        assert await store.load_saga(f"s-{index}") is not None


async def test_save_checks_the_revision(store: SagaStore) -> None:
    state = saga("s-1")
    await store.insert_saga(state)
    moved = state.model_copy(update={"status": "completed", "revision": 1})
    assert await store.save_saga(moved, expected_revision=1) is False
    assert await store.save_saga(moved, expected_revision=0) is True
    assert await store.load_saga("s-1") == moved
    assert await store.save_saga(moved, expected_revision=0) is False
    assert await store.save_saga(saga("missing", revision=1), expected_revision=0) is False


async def test_two_writers_exactly_one_wins(store: SagaStore) -> None:
    state = saga("s-1")
    await store.insert_saga(state)
    a = state.model_copy(update={"status": "completed", "revision": 1})
    b = state.model_copy(update={"status": "compensating", "revision": 1})
    results = await asyncio.gather(store.save_saga(a, 0), store.save_saga(b, 0))
    assert sorted(results) == [False, True]
    assert await store.load_saga("s-1") == (a if results[0] else b)


async def test_datetimes_come_back_at_bson_precision(store: SagaStore) -> None:
    precise = datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)
    naive = datetime(2026, 1, 2, 3, 4, 6, 123_456)
    state = saga("s-1", wake_at=precise, updated_at=naive, outbox=[command("m", precise)])
    await store.insert_saga(state)
    loaded = await store.load_saga("s-1")
    assert loaded == as_stored(state) != state
    assert loaded is not None
    assert loaded.wake_at == datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    assert loaded.updated_at == datetime(2026, 1, 2, 3, 4, 6, 123_000, tzinfo=UTC)
    assert loaded.outbox[0].timestamp == loaded.wake_at
    assert as_stored(loaded) == loaded


# -- timers -----------------------------------------------------------------------------
async def test_claim_due_returns_only_due_instances(store: SagaStore) -> None:
    await store.insert_saga(saga("past", wake_at=at(-10)))
    await store.insert_saga(saga("now", wake_at=at(0)))
    await store.insert_saga(saga("future", wake_at=at(10)))
    await store.insert_saga(saga("idle"))
    claimed = await store.claim_due(at(0), LEASE, limit=10)
    assert [s.id for s in claimed] == ["past", "now"]
    assert await store.claim_due(at(0), LEASE, limit=10) == []


async def test_claim_due_respects_the_limit(store: SagaStore) -> None:
    for index in range(5):
        await store.insert_saga(saga(f"s-{index}", wake_at=at(-index)))
    first = await store.claim_due(at(0), LEASE, limit=2)
    assert [s.id for s in first] == ["s-4", "s-3"]
    rest = await store.claim_due(at(0), LEASE, limit=10)
    assert [s.id for s in rest] == ["s-2", "s-1", "s-0"]


async def test_concurrent_claimers_get_disjoint_instances(store: SagaStore) -> None:
    ids = {f"s-{index}" for index in range(8)}
    for saga_id in ids:
        await store.insert_saga(saga(saga_id, wake_at=at(-1)))
    a, b = await asyncio.gather(
        store.claim_due(at(0), LEASE, limit=10), store.claim_due(at(0), LEASE, limit=10)
    )
    a_ids, b_ids = {s.id for s in a}, {s.id for s in b}
    assert not a_ids & b_ids
    assert a_ids | b_ids == ids


async def test_claim_pushes_wake_at_by_the_lease(store: SagaStore) -> None:
    state = saga("s-1", wake_at=at(-5), revision=3)
    await store.insert_saga(state)
    (claimed,) = await store.claim_due(at(0), LEASE, limit=10)
    assert claimed.wake_at == at(0) + LEASE
    assert claimed.revision == 3
    assert claimed == state.model_copy(update={"wake_at": at(0) + LEASE})
    assert await store.load_saga("s-1") == claimed

    assert await store.claim_due(at(29), LEASE, limit=10) == []
    (again,) = await store.claim_due(at(30), LEASE, limit=10)
    assert again.wake_at == at(30) + LEASE

    # The claim did not move the revision: the holder saves as usual.
    done = again.model_copy(update={"wake_at": None, "revision": 4})
    assert await store.save_saga(done, expected_revision=3) is True
    assert await store.load_saga("s-1") == done
    assert await store.claim_due(at(1000), LEASE, limit=10) == []


# -- outbox -----------------------------------------------------------------------------
async def test_unpublished_and_clear_outbox(store: SagaStore) -> None:
    await store.insert_saga(saga("old", outbox=[command("m-1"), command("m-2")], updated_at=at(0)))
    await store.insert_saga(saga("older", outbox=[command("m-3")], updated_at=at(-5)))
    await store.insert_saga(saga("fresh", outbox=[command("m-4")], updated_at=at(20)))
    await store.insert_saga(saga("empty", updated_at=at(-50)))

    found = await store.unpublished(older_than=at(10), limit=10)
    assert [s.id for s in found] == ["older", "old"]
    assert [s.id for s in await store.unpublished(older_than=at(10), limit=1)] == ["older"]

    await store.clear_outbox([("old", "m-1"), ("older", "m-3"), ("missing", "m-9")])
    await store.clear_outbox([])
    old = await store.load_saga("old")
    assert old is not None
    assert [c.message_id for c in old.outbox] == ["m-2"]
    assert old.revision == 0
    assert [s.id for s in await store.unpublished(older_than=at(10), limit=10)] == ["old"]

    # Clearing did not move the revision: a save with the right revision still works.
    saved = old.model_copy(update={"status": "completed", "revision": 1})
    assert await store.save_saga(saved, expected_revision=0) is True
    assert await store.load_saga("old") == saved


# -- MongoDB only -----------------------------------------------------------------------
@pytest.mark.integration
async def test_save_saga_is_one_round_trip(
    counted: MongoSagaStore, counter: RoundTripCounter
) -> None:
    state = saga("s-1")
    await counted.insert_saga(state)
    counter.reset()
    assert await counted.save_saga(state.model_copy(update={"revision": 1}), 0) is True
    assert counter.total == 1
    counter.reset()
    assert await counted.save_saga(state, 0) is False
    assert counter.total == 1


@pytest.mark.integration
async def test_concurrent_saves_share_round_trips_and_keep_their_own_outcomes(
    counted: MongoSagaStore, counter: RoundTripCounter
) -> None:
    states = [saga(f"s-{index}") for index in range(20)]
    for state in states:
        await counted.insert_saga(state)
    counter.reset()
    fresh = [s.model_copy(update={"revision": 1, "status": "completed"}) for s in states[:18]]
    stale = [s.model_copy(update={"revision": 6, "status": "failed"}) for s in states[18:]]
    outcomes = await asyncio.gather(
        *(counted.save_saga(s, 0) for s in fresh), *(counted.save_saga(s, 5) for s in stale)
    )
    assert outcomes == [True] * 18 + [False] * 2
    # Batched: far fewer round trips than saves, plus one read to settle the short count.
    assert counter.total <= 6
    for state in fresh:
        assert await counted.load_saga(state.id) == as_stored(state)
    for state in states[18:]:
        assert await counted.load_saga(state.id) == as_stored(state)


@pytest.mark.integration
async def test_concurrent_saves_of_one_saga_let_exactly_one_win(counted: MongoSagaStore) -> None:
    state = saga("s-1")
    await counted.insert_saga(state)
    rivals = [
        state.model_copy(update={"revision": 1, "input": {"writer": writer}}) for writer in range(6)
    ]
    outcomes = await asyncio.gather(*(counted.save_saga(rival, 0) for rival in rivals))
    assert outcomes.count(True) == 1
    winner = rivals[outcomes.index(True)]
    assert await counted.load_saga("s-1") == as_stored(winner)


@pytest.mark.integration
async def test_concurrent_inserts_report_each_duplicate_key(counted: MongoSagaStore) -> None:
    same_key = [saga(f"k-{index}", key="o-1") for index in range(4)]
    others = [saga(f"o-{index}", key=f"o-{index + 2}") for index in range(4)]
    outcomes = await asyncio.gather(
        *(counted.insert_saga(state) for state in [*same_key, *others]), return_exceptions=True
    )
    assert outcomes[4:] == [None] * 4
    winners = [state for state, outcome in zip(same_key, outcomes, strict=False) if outcome is None]
    assert len(winners) == 1
    for outcome in outcomes[:4]:
        if outcome is not None:
            assert isinstance(outcome, DuplicateSaga)
            assert outcome.existing == as_stored(winners[0])
    for state in [*winners, *others]:
        assert await counted.load_saga(state.id) == as_stored(state)


@pytest.mark.integration
async def test_a_write_the_batch_cannot_carry_fails_alone(counted: MongoSagaStore) -> None:
    states = [saga(f"s-{index}") for index in range(6)]
    for state in states[:5]:
        await counted.insert_saga(state)
    too_large = states[0].model_copy(update={"revision": 1, "input": {"blob": "x" * (17 << 20)}})
    good = [s.model_copy(update={"revision": 1, "status": "completed"}) for s in states[1:5]]
    # The first write leaves alone at once; the others wait for it and form one batch.
    outcomes = await asyncio.gather(
        counted.save_saga(good[0], 0),
        counted.save_saga(too_large, 0),
        *(counted.save_saga(s, 0) for s in good[1:]),
        counted.insert_saga(states[5]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], UnstorableData)  # never an outage: never retried
    assert outcomes[:1] + outcomes[2:] == [True] * 4 + [None]
    assert await counted.load_saga("s-0") == as_stored(states[0])
    for state in [*good, states[5]]:
        assert await counted.load_saga(state.id) == as_stored(state)


@pytest.mark.integration
async def test_a_batch_that_fails_as_a_whole_is_retried_write_by_write(
    counted: MongoSagaStore,
) -> None:
    states = [saga(f"s-{index}") for index in range(6)]
    for state in states[:5]:
        await counted.insert_saga(state)
    # BSON cannot encode a set: the driver refuses the whole batch before sending part of it.
    unencodable = states[0].model_copy(update={"revision": 1, "input": {"tags": {"a", "b"}}})
    good = [s.model_copy(update={"revision": 1, "status": "completed"}) for s in states[1:5]]
    outcomes = await asyncio.gather(
        counted.save_saga(good[0], 0),
        counted.insert_saga(states[5]),
        *(counted.save_saga(s, 0) for s in good[1:]),
        counted.save_saga(unencodable, 0),
        return_exceptions=True,
    )
    assert outcomes[:5] == [True, None, True, True, True]
    assert isinstance(outcomes[5], UnstorableData)
    assert "cannot encode" in str(outcomes[5])
    assert await counted.load_saga("s-0") == as_stored(states[0])
    for state in [*good, states[5]]:
        assert await counted.load_saga(state.id) == as_stored(state)


@pytest.mark.integration
async def test_retired_indexes_are_dropped(counted: MongoSagaStore, mongo: Any) -> None:
    sagas = mongo[counted._db.name]["sagas"]
    await sagas.drop_indexes()
    previous = [  # what earlier versions made
        IndexModel([("key", 1)], name="key"),
        IndexModel([("wake_at", 1)], name="wake_at"),
        IndexModel(
            [("definition", 1), ("key", 1)],
            name="definition_key_unique",
            unique=True,
            partialFilterExpression={"key": {"$type": "string"}},
        ),
        IndexModel(
            [("updated_at", 1)],
            name="unpublished",
            partialFilterExpression={"outbox.0": {"$exists": True}},
        ),
        IndexModel([("key", 1), ("created_at", -1), ("_id", -1)], name="list_key_created"),
    ]
    await sagas.create_indexes(previous)
    await counted.ensure_indexes()
    names = {index["name"] async for index in await sagas.list_indexes()}
    assert not names & {
        "key",
        "wake_at",
        "definition_key_unique",
        "unpublished",
        "list_key_created",
    }
    assert {"_id_", "key_definition_unique", "due", "unpublished_outbox"} <= names


@pytest.mark.integration
async def test_clear_outbox_is_one_round_trip(
    counted: MongoSagaStore, counter: RoundTripCounter
) -> None:
    for index in range(3):
        outbox = [command(f"m-{index}-a"), command(f"m-{index}-b")]
        await counted.insert_saga(saga(f"s-{index}", outbox=outbox))
    counter.reset()
    await counted.clear_outbox([(f"s-{i}", f"m-{i}-{x}") for i in range(3) for x in "ab"])
    assert counter.total == 1
    assert await counted.unpublished(at(100), limit=10) == []


@pytest.mark.integration
async def test_definitions_are_cached(counted: MongoSagaStore, counter: RoundTripCounter) -> None:
    await counted.register_definition(definition(), "a")
    counter.reset()
    assert await counted.get_definition("order", 1) is not None
    assert await counted.register_definition(definition(), "a") == "identical"
    assert counter.total == 0


@pytest.mark.integration
async def test_idle_claim_is_one_round_trip(
    counted: MongoSagaStore, counter: RoundTripCounter
) -> None:
    await counted.insert_saga(saga("s-1", wake_at=at(10)))
    counter.reset()
    assert await counted.claim_due(at(0), LEASE, limit=100) == []
    assert counter.total == 1


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("input", {"a\x00b": 1}, "NULL byte"),
        ("input", {"n": 1 << 70}, "8-byte ints"),
        ("input", {"s": "\ud8d1"}, "surrogates"),
        ("input", {"blob": "x" * 3000}, "budget"),
    ],
)
async def test_data_that_can_never_be_stored_is_unstorable_not_an_outage(
    backend: SagaStore, field: str, value: Any, why: str
) -> None:
    if isinstance(backend, InMemorySagaStore):
        backend.max_saga_bytes = 2048
    else:
        assert isinstance(backend, MongoSagaStore)
        backend._max_saga_bytes = 2048
    await backend.ensure_indexes()
    bad = saga("s-bad").model_copy(update={field: value})
    with pytest.raises(UnstorableData, match=why):
        await backend.insert_saga(bad)
    await backend.insert_saga(saga("s-1"))
    with pytest.raises(UnstorableData, match=why):
        await backend.save_saga(bad.model_copy(update={"id": "s-1", "revision": 1}), 0)
    assert await backend.load_saga("s-1") == as_stored(saga("s-1"))
    assert await backend.load_saga("s-bad") is None


# PyMongo leaves the socket of a refused connection to the garbage collector; collect it
# here, where it is expected, rather than in whichever test runs next.
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_driver_errors_become_store_unavailable() -> None:
    unreachable = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    store = MongoSagaStore.connect(unreachable, "db", serverSelectionTimeoutMS=100)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.ping()
        assert caught.value.__cause__ is not None
        with pytest.raises(StoreUnavailable):
            await store.load_saga("s-1")
    finally:
        await store.close()
    del store, caught
    gc.collect()
