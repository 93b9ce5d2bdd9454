"""Transitions of one saga run one at a time in a process; other sagas are not held up."""

from __future__ import annotations

import asyncio

from coordinator.engine.state import SagaState
from coordinator.runtime.serial import PerKeyLock
from tests.unit.test_runtime_service import RacingStore, make_service, succeeded


class YieldingStore(RacingStore):
    """Yields to the loop inside every read and write, as a real database does."""

    async def load_saga(self, saga_id: str) -> SagaState | None:
        await asyncio.sleep(0)
        return await super().load_saga(saga_id)

    async def save_saga(
        self, state: SagaState, expected_revision: int, base: SagaState | None = None
    ) -> bool:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return await super().save_saga(state, expected_revision, base)


async def test_a_burst_of_duplicates_to_one_saga_never_conflicts_with_itself() -> None:
    service, store, publisher, _ = await make_service(YieldingStore())
    saga, _ = await service.start_saga("order", {}, key="k")
    results = await asyncio.gather(
        *(service.on_reply(saga.id, succeeded("reserve")) for _ in range(200))
    )
    assert all(result is not None for result in results)
    assert service.stats.conflicts == 0
    assert [c.routing_key for c in publisher.published] == ["a.reserve", "b.charge"]
    stored = store.sagas[saga.id]
    assert stored.step("reserve").status == "succeeded"
    assert stored.step("charge").action.attempt == 1
    assert len(service.runner._serial) == 0  # nothing kept once the burst is over


async def test_one_saga_holding_its_lock_does_not_hold_up_another() -> None:
    locks = PerKeyLock()
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold_a() -> None:
        async with locks.hold("a"):
            held.set()
            await release.wait()

    task = asyncio.create_task(hold_a())
    await held.wait()
    async with asyncio.timeout(5), locks.hold("b"):
        assert len(locks) == 2
    release.set()
    await task
    assert len(locks) == 0
