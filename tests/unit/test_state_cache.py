"""The service's cache of instance states: it saves the read, and a stale entry never wins.

Two services on one store play two coordinator replicas: each caches the states it saved,
so each holds a stale state as soon as the other one moves the saga on. The conditional
save turns that into a conflict, and the transition is recomputed from a fresh read.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

from coordinator.adapters.memory import InMemorySagaStore
from coordinator.engine.engine import Options
from coordinator.engine.state import SagaState
from coordinator.runtime.cache import StateCache, state_size
from coordinator.service import SagaService
from tests.unit.test_runtime_service import (
    DEFINITION,
    Clock,
    RecordingPublisher,
    succeeded,
)


class CountingStore(InMemorySagaStore):
    """Counts the reads of an instance."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    async def load_saga(self, saga_id: str) -> SagaState | None:
        self.loads += 1
        return await super().load_saga(saga_id)


async def two_replicas(
    state_cache_bytes: int = 1 << 20,
) -> tuple[SagaService, SagaService, CountingStore, RecordingPublisher, RecordingPublisher]:
    store = CountingStore()
    await store.register_definition(DEFINITION, "source")
    ids = (f"s-{n}" for n in itertools.count(1))
    replicas = []
    publishers = []
    for _ in range(2):
        publisher = RecordingPublisher()
        service = SagaService(
            store,
            publisher,
            options=Options(),
            clock=Clock(),
            random=lambda: 0.5,
            new_id=lambda: next(ids),
            relay_age=timedelta(seconds=5),
            state_cache_bytes=state_cache_bytes,
        )
        await service.refresh_definitions()
        replicas.append(service)
        publishers.append(publisher)
    return replicas[0], replicas[1], store, publishers[0], publishers[1]


def events(state: SagaState) -> list[str]:
    return [entry.event for entry in state.history]


async def test_a_replica_applies_its_next_transition_without_reading() -> None:
    a, _, store, publisher, _ = await two_replicas()
    saga, _ = await a.start_saga("order", {}, key="k")
    transition = await a.on_reply(saga.id, succeeded("reserve"))
    assert transition is not None and transition.state.revision == 2
    assert store.loads == 0  # the state a saved at the start was its read
    assert [c.routing_key for c in publisher.published] == ["a.reserve", "b.charge"]
    assert store.sagas[saga.id].revision == 2


async def test_a_stale_cached_state_never_wins() -> None:
    a, b, store, published_a, published_b = await two_replicas()
    saga, _ = await a.start_saga("order", {}, key="k")  # a caches revision 1
    # b moves the saga on: reserve succeeded, charge sent (revision 2).
    await b.on_reply(saga.id, succeeded("reserve"))
    assert [c.routing_key for c in published_b.published] == ["b.charge"]
    # a gets a redelivery of the same reply. On its cached revision 1 it would send charge
    # again; the save fails, a reads revision 2 and records a duplicate instead.
    transition = await a.on_reply(saga.id, succeeded("reserve"))
    assert transition is not None
    stored = store.sagas[saga.id]
    assert stored.revision == 3 and stored.status == "running"
    assert events(stored)[-1] == "reply.ignored"
    assert [c.routing_key for c in published_a.published] == ["a.reserve"]  # no second charge
    assert a.stats.conflicts == 1
    assert store.loads == 2  # b's read, and a's fresh read after the failed save
    # a's cache now holds revision 3: the charge reply applies without another conflict.
    done = await a.on_reply(saga.id, succeeded("charge"))
    assert done is not None and done.state.status == "completed"
    assert store.sagas[saga.id].status == "completed"
    assert a.stats.conflicts == 1


async def test_a_stale_cached_state_loses_no_transition() -> None:
    a, b, store, _, _ = await two_replicas()
    saga, _ = await a.start_saga("order", {}, key="k")
    await b.on_reply(saga.id, succeeded("reserve"))
    # a still believes reserve is awaited: the charge reply looks unexpected on its cached
    # state, but it is recomputed on the stored one and completes the saga.
    transition = await a.on_reply(saga.id, succeeded("charge"))
    assert transition is not None and transition.state.status == "completed"
    stored = store.sagas[saga.id]
    assert stored.status == "completed" and stored.revision == 3
    assert "reply.ignored" not in events(stored)


async def test_the_cache_is_bounded_by_bytes_and_can_be_turned_off() -> None:
    one_saga = state_size((await (await two_replicas())[0].start_saga("order", {}))[0])
    a, _, store, _, _ = await two_replicas(state_cache_bytes=one_saga * 3 // 2)
    first, _ = await a.start_saga("order", {}, key="k1")
    second, _ = await a.start_saga("order", {}, key="k2")  # evicts the first
    await a.on_reply(second.id, succeeded("reserve"))
    assert store.loads == 0
    await a.on_reply(first.id, succeeded("reserve"))
    assert store.loads == 1
    off, _, store_off, _, _ = await two_replicas(state_cache_bytes=0)
    saga, _ = await off.start_saga("order", {}, key="k")
    await off.on_reply(saga.id, succeeded("reserve"))
    assert store_off.loads == 1


async def test_the_next_save_takes_the_previous_clear_off_the_queue() -> None:
    a, _, store, _, _ = await two_replicas()
    saga, _ = await a.start_saga("order", {}, key="k")
    await a.on_reply(saga.id, succeeded("reserve"))
    # The reply's save wrote the outbox without the reserve command: only charge is left.
    assert [c.routing_key for c in store.sagas[saga.id].outbox] == ["b.charge"]
    assert await a.flush_outbox() == 1
    assert store.sagas[saga.id].outbox == []


async def test_a_finished_saga_leaves_the_cache() -> None:
    a, _, store, _, _ = await two_replicas()
    saga, _ = await a.start_saga("order", {}, key="k")
    await a.on_reply(saga.id, succeeded("reserve"))
    await a.on_reply(saga.id, succeeded("charge"))
    assert store.sagas[saga.id].status == "completed" and store.loads == 0
    # A late duplicate is read from the store, recorded, and changes nothing else.
    late = await a.on_reply(saga.id, succeeded("charge"))
    assert late is not None and events(late.state)[-1] == "reply.ignored"
    assert store.loads == 1


def test_large_states_make_the_cache_hold_fewer_sagas_not_more_bytes() -> None:
    cache = StateCache(max_bytes=5 * 1024 * 1024)
    template = SagaState.model_validate(
        {
            "id": "s",
            "definition": "order",
            "definition_version": 1,
            "steps": [],
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        }
    )
    for index in range(20):  # 20 sagas with a 1 MiB input each
        cache.remember(template.model_copy(update={"id": f"s-{index}", "input": "x" * (1 << 20)}))
    assert cache.bytes <= 5 * 1024 * 1024
    assert len(cache) == 4
    assert cache.get("s-19") is not None and cache.get("s-0") is None
    cache.remember(template.model_copy(update={"id": "huge", "input": "x" * (6 << 20)}))
    assert cache.get("huge") is None  # over the whole budget: never cached
    assert cache.bytes <= 5 * 1024 * 1024
