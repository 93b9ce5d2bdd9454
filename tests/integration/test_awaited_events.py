"""Awaited events through the runtime: correlation by index, the buffer, and the race.

Two ``SagaService``s on one store play two coordinator replicas: ``waiter`` runs the saga
(its step starts waiting), ``receiver`` handles the event. Gates in their stores hold one
replica between its write and its read while the other one runs, so that every
interleaving of "the step starts waiting" and "the event arrives" is played on purpose:
whichever order, the step is completed, once. Each test runs on the in-memory store and on
MongoDB (SecantusDB, or the server ``SAGA_TEST_MONGODB_URL`` names).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from coordinator.adapters.memory import InMemorySagaStore
from coordinator.adapters.mongo import MongoSagaStore
from coordinator.engine.engine import Options
from coordinator.engine.messages import ReplyReceived
from coordinator.engine.state import Command, SagaState
from coordinator.errors import StoreUnavailable
from coordinator.ports import BufferedEvent, WaitingSaga
from coordinator.service import SagaService
from schemas.definition import SagaDefinition
from schemas.envelope import SucceededReply

T0 = datetime(2030, 1, 1, tzinfo=UTC)

TRIP = SagaDefinition.model_validate(
    {
        "name": "trip",
        "version": 1,
        "steps": [
            {
                "name": "hold",
                "participant": "hotels",
                "command": "hold",
                "input": {"trip": "${input.trip_id}"},
            },
            {
                "name": "paid",
                "await": {
                    "event": "payment.authorized",
                    "match": "${event.trip_id}",
                    "equals": "${input.trip_id}",
                    "buffer": "1m",
                },
                "timeout": "1h",
            },
            {
                "name": "confirm",
                "participant": "hotels",
                "command": "confirm",
                "input": {"payment": "${steps.paid.output.payment_id}"},
            },
        ],
    }
)


class Gate:
    """Holds whoever passes through it until opened; ``reached`` is set when one arrives."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()
        self.armed = False

    async def __call__(self) -> None:
        if self.armed:
            self.reached.set()
            await self.opened.wait()


class GatedMixin:
    """A store whose event reads wait at a gate: ``look_up_gate`` holds the buffer read
    of a step that starts waiting, ``waiting_gate`` the waiting-sagas read of an event."""

    look_up_gate: Gate
    waiting_gate: Gate
    fail_look_ups = 0

    async def buffered_events(
        self, event_type: str, value: str | int | float, now: datetime, limit: int
    ) -> list[BufferedEvent]:
        await self.look_up_gate()
        if self.fail_look_ups:
            self.fail_look_ups -= 1
            raise StoreUnavailable("MongoDB did not answer")
        return await super().buffered_events(event_type, value, now, limit)  # type: ignore[misc]

    async def waiting_sagas(
        self, event_type: str, values: Sequence[str | int | float], after: str | None, limit: int
    ) -> list[WaitingSaga]:
        await self.waiting_gate()
        return await super().waiting_sagas(event_type, values, after, limit)  # type: ignore[misc]


class GatedMemory(GatedMixin, InMemorySagaStore):
    pass


class GatedMongo(GatedMixin, MongoSagaStore):
    pass


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Publisher:
    def __init__(self) -> None:
        self.published: list[Command] = []

    async def publish_commands(self, commands: Sequence[Command]) -> None:
        self.published.extend(commands)


Replicas = tuple[SagaService, SagaService, Any, Any, Clock]


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.integration)])
def backends(request: pytest.FixtureRequest) -> list[Any]:
    """Two stores on one database (one in-memory store, twice)."""
    if request.param == "memory":
        shared = GatedMemory()
        return [shared, shared]
    client: AsyncMongoClient[Any] = request.getfixturevalue("mongo")
    database = request.getfixturevalue("database_name")
    return [GatedMongo(client, database), GatedMongo(client, database)]


@pytest.fixture
async def replicas(backends: list[Any]) -> AsyncIterator[Replicas]:
    """(waiter, receiver, waiter's store, receiver's store, clock) on one shared store."""
    clock = Clock()
    stores = backends
    for store in stores:
        store.look_up_gate, store.waiting_gate = Gate(), Gate()
    await stores[0].ensure_indexes()
    await stores[0].register_definition(TRIP, "source")
    ids = (f"id-{n}" for n in itertools.count(1))
    services = []
    for store in stores:
        service = SagaService(
            store,
            Publisher(),
            options=Options(),
            clock=clock,
            random=lambda: 0.5,
            new_id=lambda: next(ids),
        )
        await service.refresh_definitions()
        services.append(service)
    yield services[0], services[1], stores[0], stores[1], clock
    for store in stores:
        if isinstance(store, MongoSagaStore):
            await store.close()


def succeeded(step: str, output: dict[str, Any] | None = None) -> ReplyReceived:
    return ReplyReceived(
        step=step,
        kind="action",
        attempt=1,
        reply=SucceededReply(status="succeeded", output=output or {}),
        at=T0,
    )


def authorized(trip: Any = "t-1", payment: str = "p-1") -> dict[str, Any]:
    return {"trip_id": trip, "payment_id": payment}


async def started(waiter: SagaService) -> SagaState:
    saga, _ = await waiter.start_saga("trip", {"trip_id": "t-1"})
    return saga


def completions(state: SagaState) -> list[str]:
    return [entry.step or "" for entry in state.history if entry.event == "event.received"]


async def load(service: SagaService, saga_id: str) -> SagaState:
    state = await service._store.load_saga(saga_id)
    assert state is not None
    return state


async def test_an_event_completes_the_step_waiting_for_it(replicas: Replicas) -> None:
    waiter, receiver, *_ = replicas
    saga = await started(waiter)
    await waiter.on_reply(saga.id, succeeded("hold"))
    assert (await load(waiter, saga.id)).step("paid").status == "waiting"

    await receiver.on_event("payment.authorized", authorized("t-2"), "m-0", None)  # another trip
    await receiver.on_event("payment.authorized", authorized(), "m-1", None)

    state = await load(waiter, saga.id)
    assert state.step("paid").status == "succeeded"
    assert state.step("paid").output == authorized()
    assert state.step("paid").event_id == "m-1"
    assert state.step("confirm").status == "running"
    assert completions(state) == ["paid"]
    assert receiver.stats.events_matched == 1
    assert receiver.stats.events_buffered == 2  # every awaited event is kept first


async def test_an_event_before_its_step_waits_is_kept_and_then_completes_it(
    replicas: Replicas,
) -> None:
    waiter, receiver, *_ = replicas
    saga = await started(waiter)
    await receiver.on_event("payment.authorized", authorized(), "m-1", None)  # too early
    assert (await load(waiter, saga.id)).step("paid").status == "pending"

    await waiter.on_reply(saga.id, succeeded("hold"))  # the step starts waiting: the buffer

    state = await load(waiter, saga.id)
    assert state.step("paid").status == "succeeded"
    assert state.step("paid").event_id == "m-1"
    assert completions(state) == ["paid"]
    assert waiter.stats.events_matched == 1


async def test_a_kept_event_older_than_the_steps_buffer_does_not_complete_it(
    replicas: Replicas,
) -> None:
    waiter, receiver, _, _, clock = replicas
    saga = await started(waiter)
    await receiver.on_event("payment.authorized", authorized(), "m-1", None)
    clock.now += timedelta(minutes=2)  # past the step's 1m buffer
    await waiter.on_reply(saga.id, succeeded("hold"))
    assert (await load(waiter, saga.id)).step("paid").status == "waiting"

    await waiter.fire_due_timers()  # the sweep counts it: kept, never matched, expired
    assert waiter.stats.events_expired == 1


async def test_the_event_arrives_between_the_waiting_save_and_the_buffer_look_up(
    replicas: Replicas,
) -> None:
    """Order 1: the saga is saved waiting; the event is kept and delivered (it finds the
    saga); then the saga's buffer look-up finds it too: the engine completes it once."""
    waiter, receiver, waiter_store, _, _ = replicas
    saga = await started(waiter)
    waiter_store.look_up_gate.armed = True
    reply = asyncio.create_task(waiter.on_reply(saga.id, succeeded("hold")))
    await asyncio.wait_for(waiter_store.look_up_gate.reached.wait(), 10)

    await receiver.on_event("payment.authorized", authorized(), "m-1", None)
    assert (await load(receiver, saga.id)).step("paid").status == "succeeded"

    waiter_store.look_up_gate.opened.set()
    await asyncio.wait_for(reply, 10)
    state = await load(waiter, saga.id)
    assert completions(state) == ["paid"]
    assert state.step("confirm").action.attempt == 1  # sent once


async def test_the_event_is_kept_before_the_step_waits_and_read_after_the_look_up(
    replicas: Replicas,
) -> None:
    """Order 2: the event is kept, then held before it reads the waiting sagas; the saga
    starts waiting and its look-up finds the event; the event's read then finds the saga
    no longer waiting for it."""
    waiter, receiver, _, receiver_store, _ = replicas
    saga = await started(waiter)
    receiver_store.waiting_gate.armed = True
    event = asyncio.create_task(receiver.on_event("payment.authorized", authorized(), "m-1", None))
    await asyncio.wait_for(receiver_store.waiting_gate.reached.wait(), 10)

    await waiter.on_reply(saga.id, succeeded("hold"))
    assert (await load(waiter, saga.id)).step("paid").status == "succeeded"

    receiver_store.waiting_gate.opened.set()
    await asyncio.wait_for(event, 10)
    state = await load(waiter, saga.id)
    assert completions(state) == ["paid"]
    assert state.step("confirm").action.attempt == 1


async def test_both_reads_after_both_writes_complete_the_step_once(replicas: Replicas) -> None:
    """Both held after their writes: each side then sees the other; one completes the
    step, the other's delivery is a recorded no-op (the same message_id)."""
    waiter, receiver, waiter_store, receiver_store, _ = replicas
    saga = await started(waiter)
    receiver_store.waiting_gate.armed = waiter_store.look_up_gate.armed = True
    event = asyncio.create_task(receiver.on_event("payment.authorized", authorized(), None, None))
    await asyncio.wait_for(receiver_store.waiting_gate.reached.wait(), 10)
    reply = asyncio.create_task(waiter.on_reply(saga.id, succeeded("hold")))
    await asyncio.wait_for(waiter_store.look_up_gate.reached.wait(), 10)

    receiver_store.waiting_gate.opened.set()
    waiter_store.look_up_gate.opened.set()
    await asyncio.wait_for(asyncio.gather(event, reply), 10)
    state = await load(waiter, saga.id)
    assert completions(state) == ["paid"]  # an event without message_id: one made for it
    assert state.step("confirm").action.attempt == 1


async def test_a_failed_look_up_is_read_again_by_the_next_sweep(replicas: Replicas) -> None:
    waiter, receiver, waiter_store, _, clock = replicas
    await waiter.fire_due_timers()  # the start-up sweep
    saga = await started(waiter)
    await receiver.on_event("payment.authorized", authorized(), "m-1", None)
    waiter_store.fail_look_ups = 1
    await waiter.on_reply(saga.id, succeeded("hold"))  # saved waiting; the look-up fails
    assert (await load(waiter, saga.id)).step("paid").status == "waiting"

    clock.now += timedelta(seconds=6)
    await waiter.fire_due_timers()  # the sweep's recovery pass
    assert (await load(waiter, saga.id)).step("paid").status == "succeeded"


async def test_every_saga_waiting_for_the_value_is_completed(replicas: Replicas) -> None:
    waiter, receiver, *_ = replicas
    first, _ = await waiter.start_saga("trip", {"trip_id": "t-1"})
    second, _ = await waiter.start_saga("trip", {"trip_id": "t-1"})
    for saga in (first, second):
        await waiter.on_reply(saga.id, succeeded("hold"))
    await receiver.on_event("payment.authorized", authorized(), "m-1", None)
    for saga in (first, second):
        assert (await load(waiter, saga.id)).step("paid").status == "succeeded"
    assert receiver.stats.events_matched == 2


@pytest.mark.parametrize(
    ("event", "body", "refused"),
    [
        ("payment.declined", authorized(), "no step of this saga is waiting for an event"),
        ("payment.authorized", authorized("t-9"), "the body does not match the waiting step"),
    ],
)
async def test_a_rest_event_that_completes_nothing_is_refused(
    replicas: Replicas, event: str, body: dict[str, Any], refused: str
) -> None:
    waiter, *_ = replicas
    saga = await started(waiter)
    await waiter.on_reply(saga.id, succeeded("hold"))
    transition = await waiter.deliver_event(saga.id, event, body, None)
    assert transition.refused is not None and refused in transition.refused
    assert (await load(waiter, saga.id)).step("paid").status == "waiting"


async def test_a_rest_event_completes_the_waiting_step(replicas: Replicas) -> None:
    waiter, *_ = replicas
    saga = await started(waiter)
    await waiter.on_reply(saga.id, succeeded("hold"))
    transition = await waiter.deliver_event(saga.id, "payment.authorized", authorized(), "ok-1")
    assert transition.refused is None
    assert transition.state.step("paid").status == "succeeded"
    again = await waiter.deliver_event(saga.id, "payment.authorized", authorized(), "ok-1")
    assert again.refused is not None  # nothing waits any more


async def test_awaited_types_are_bound_and_unbound_with_the_triggers() -> None:
    bound: list[tuple[set[str], set[str]]] = []

    async def binder(wanted: set[str], known: set[str]) -> None:
        bound.append((set(wanted), set(known)))

    store = InMemorySagaStore()
    await store.register_definition(TRIP, "source")
    service = SagaService(
        store,
        Publisher(),
        options=Options(),
        clock=Clock(),
        random=lambda: 0.5,
        new_id=lambda: "x",
        trigger_binder=binder,
    )
    await service.refresh_definitions()
    assert bound[-1][0] == {"payment.authorized"}
    await service.retire_definition("trip")  # running sagas may still wait: kept bound
    assert bound[-1][0] == {"payment.authorized"}
