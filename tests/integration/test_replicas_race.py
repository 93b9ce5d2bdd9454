"""Two replicas racing on one saga through the real store, made deterministic.

Two ``SagaService``s, each with its own ``MongoSagaStore`` (and so its own caches), play
two coordinator replicas on one database. The transition runner's ``before_save`` seam
holds replica A between its load and its save while replica B commits; then A is
released. Exactly one transition applies per input, the loser recomputes from a fresh
read, nothing is lost, and no command leaves for a change that was not persisted.

The second test makes a "false conflict" happen: under group commit, a save that landed
can be reported lost when another writer overwrote it before the batch's token read
(``MongoSagaStore._settle_by_token``). The service then recomputes on the fresh state,
and the landed save's commands, still in the outbox, are sent by the relay: late, never
lost, never twice from this process.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from coordinator.adapters.mongo import MongoSagaStore
from coordinator.engine.state import SagaState
from coordinator.service import SagaService
from tests.contract.test_saga_store import saga as stored_saga
from tests.unit.test_runtime_service import DEFINITION, RecordingPublisher, service_on, succeeded

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


async def replica(
    store: MongoSagaStore, clock: Clock, ids: Any
) -> tuple[SagaService, RecordingPublisher]:
    publisher = RecordingPublisher()
    service = await service_on(store, publisher, clock, ids)
    return service, publisher


@pytest.fixture
async def stores(
    mongo: AsyncMongoClient[Any], database_name: str
) -> AsyncIterator[tuple[MongoSagaStore, MongoSagaStore]]:
    first = MongoSagaStore(mongo, database_name)
    second = MongoSagaStore(mongo, database_name)
    await first.ensure_indexes()
    await first.register_definition(DEFINITION, "source")
    yield first, second
    await first.close()
    await second.close()


def keys(commands: Sequence[Any]) -> list[str]:
    return [command.routing_key for command in commands]


def events(state: SagaState) -> list[str]:
    return [entry.event for entry in state.history]


async def test_held_between_load_and_save_the_loser_recomputes(
    stores: tuple[MongoSagaStore, MongoSagaStore],
) -> None:
    clock, ids = Clock(), (f"s-{n}" for n in itertools.count(1))
    a, published_a = await replica(stores[0], clock, ids)
    b, published_b = await replica(stores[1], clock, ids)
    saga, _ = await a.start_saga("order", {}, key="k")
    computed: list[SagaState] = []
    held, release = asyncio.Event(), asyncio.Event()

    async def hold(state: SagaState) -> None:
        a.runner.before_save = None  # hold the first attempt only
        computed.append(state)
        held.set()
        await release.wait()

    # A and B both take the reply (a redelivery reached the other replica too).
    a.runner.before_save = hold
    racing = asyncio.create_task(a.on_reply(saga.id, succeeded("reserve")))
    await held.wait()
    assert keys(computed[0].outbox) == ["b.charge"]  # A's unsaved change would send charge
    assert await b.on_reply(saga.id, succeeded("reserve")) is not None  # B commits first
    release.set()
    await racing

    stored = await stores[0].load_saga(saga.id)
    assert stored is not None
    assert a.stats.conflicts == 1 and b.stats.conflicts == 0
    assert keys(published_a.published) == ["a.reserve"]  # A's lost change sent nothing
    assert keys(published_b.published) == ["b.charge"]  # the winner's, once
    assert stored.step("reserve").status == "succeeded"
    assert stored.step("charge").action.attempt == 1  # applied once: one charge attempt
    assert events(stored).count("action.succeeded") == 1


class FalseConflict(MongoSagaStore):
    """Saves for real, then lets ``overwrite`` run and reports the save lost, as a batch's
    token read does when another writer overwrote a landed save before it."""

    overwrite: Any = None

    async def save_saga(
        self, state: SagaState, expected_revision: int, base: SagaState | None = None
    ) -> bool:
        landed = await super().save_saga(state, expected_revision, base)
        if landed and self.overwrite is not None:
            overwrite, self.overwrite = self.overwrite, None
            await overwrite()
            return False
        return landed


async def test_a_false_conflict_loses_nothing_and_sends_nothing_twice(
    mongo: AsyncMongoClient[Any], database_name: str
) -> None:
    first, second = FalseConflict(mongo, database_name), MongoSagaStore(mongo, database_name)
    await first.ensure_indexes()
    await first.register_definition(DEFINITION, "source")
    clock, ids = Clock(), (f"s-{n}" for n in itertools.count(1))
    a, published_a = await replica(first, clock, ids)
    b, published_b = await replica(second, clock, ids)
    saga, _ = await a.start_saga("order", {}, key="k")
    await a.flush_outbox()

    async def b_moves_on() -> None:  # B reads A's landed save and cancels on top of it
        await b.cancel(saga.id, "operator")

    first.overwrite = b_moves_on
    await a.on_reply(saga.id, succeeded("reserve"))
    stored = await second.load_saga(saga.id)
    assert stored is not None
    assert a.stats.conflicts == 1
    assert "b.charge" not in keys(published_a.published)  # not from the "lost" save
    assert events(stored).count("action.succeeded") == 1  # A's reply applied once
    assert "saga.cancelled" in events(stored)  # B's cancel applied too
    # The landed save's command is still in the outbox: the relay sends it, once.
    clock.now += timedelta(seconds=10)
    assert await a.relay_unpublished() == 1
    await a.flush_outbox()
    assert await b.relay_unpublished() == 0  # cleared: the other replica sends it no more
    sent = keys(published_a.published) + keys(published_b.published)
    assert sent.count("b.charge") == 1, sent
    await first.close()
    await second.close()


class OverwrittenBeforeSettling(MongoSagaStore):
    """Runs ``before_settle`` just before the batch's token read, once."""

    before_settle: Any = None

    async def _settle_by_token(self, batch: Any, indexes: Any, outcomes: Any) -> None:
        if self.before_settle is not None:
            before, self.before_settle = self.before_settle, None
            await before()
        await super()._settle_by_token(batch, indexes, outcomes)


async def test_group_commit_reports_a_landed_then_overwritten_save_as_lost(
    mongo: AsyncMongoClient[Any], database_name: str
) -> None:
    store = OverwrittenBeforeSettling(mongo, database_name)
    other = MongoSagaStore(mongo, database_name)
    await store.ensure_indexes()
    states = [stored_saga(f"s-{index}") for index in range(3)]
    for state in states:
        await store.insert_saga(state)
    moved = [state.model_copy(update={"revision": 1}) for state in states]
    overwritten = moved[1].model_copy(update={"revision": 2, "status": "compensating"})
    store.before_settle = lambda: other.save_saga(overwritten, 1)
    # The first save leaves alone; the next two form one batch whose matched count (1)
    # falls short of its replaces (2), so the batch reads the write tokens back.
    outcomes = await asyncio.gather(
        store.save_saga(moved[0], 0),
        store.save_saga(moved[1], 0),  # lands, then is overwritten before the read
        store.save_saga(moved[2], 7),  # a true conflict
    )
    assert outcomes == [True, False, False]
    landed = await other.load_saga("s-1")
    assert landed is not None and landed.revision == 2 and landed.status == "compensating"
    await store.close()
    await other.close()
