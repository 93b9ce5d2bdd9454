"""Data MongoDB can never store is rejected, never retried as if MongoDB were down.

The in-memory store refuses what MongoDB would (``encode_saga``); these tests drive the
service through it: a reply's output that cannot be stored fails the attempt with
``invalid_reply``, an event that would start an unstorable saga is rejected, a timer whose
transition cannot be stored stops the saga instead of firing forever.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from coordinator.engine.messages import ReplyReceived
from coordinator.engine.state import SagaState
from coordinator.errors import UnstorableData
from coordinator.service import MessageRejected
from schemas.envelope import SucceededReply
from tests.unit.test_runtime_service import T0, make_service


def output_reply(step: str, output: dict[str, Any], attempt: int = 1) -> ReplyReceived:
    return ReplyReceived(
        step=step,
        kind="action",
        attempt=attempt,
        reply=SucceededReply(status="succeeded", output=output),
        at=T0,
    )


@pytest.mark.parametrize(
    "output", [{"bad\x00key": 1}, {"n": 1 << 64}, {"blob": "x" * 20_000}], ids=str
)
async def test_a_reply_whose_output_cannot_be_stored_fails_the_attempt(
    output: dict[str, Any],
) -> None:
    service, store, publisher, _ = await make_service()
    store.max_saga_bytes = 16_000
    saga, _ = await service.start_saga("order", {}, key="k")
    transition = await service.on_reply(saga.id, output_reply("reserve", output))
    assert transition is not None
    stored = store.sagas[saga.id]
    reserve = stored.step("reserve")
    assert reserve.status == "failed"
    assert reserve.output is None
    assert reserve.action.error is not None
    assert reserve.action.error.code == "invalid_reply"
    assert reserve.action.error.retryable is False
    assert stored.status in {"compensating", "compensated"}
    assert [c.routing_key for c in publisher.published] == ["a.reserve"]  # no charge sent


async def test_an_event_that_would_start_an_unstorable_saga_is_rejected() -> None:
    service, store, _, _ = await make_service()
    store.max_saga_bytes = 4_000
    with pytest.raises(MessageRejected, match="budget"):
        await service.on_event("order.placed", {"order_id": "o-1", "x": "y" * 5_000}, None, None)
    with pytest.raises(MessageRejected, match="NULL"):
        await service.on_event("order.placed", {"order_id": "o-2", "k\x00": 1}, None, None)
    assert store.sagas == {}


async def test_a_rest_start_with_an_unstorable_input_raises_unstorable() -> None:
    service, store, _, _ = await make_service()
    with pytest.raises(UnstorableData, match="8-byte"):
        await service.start_saga("order", {"n": 1 << 80})
    assert store.sagas == {}


async def test_a_timer_whose_transition_cannot_be_stored_stops_the_saga() -> None:
    service, store, _, clock = await make_service()
    saga, _ = await service.start_saga("order", {})
    refuse: Callable[[SagaState], bool] = lambda state: state.status != "failed"  # noqa: E731
    original = store.save_saga

    async def refusing(state: SagaState, expected: int, base: SagaState | None = None) -> bool:
        if refuse(state):
            raise UnstorableData("cannot store saga: refused")
        return await original(state, expected, base)

    store.save_saga = refusing  # type: ignore[method-assign]
    clock.now += timedelta(seconds=11)  # reserve's attempt times out
    assert await service.fire_due_timers() == 1
    stopped = store.sagas[saga.id]
    assert stopped.status == "failed"
    assert stopped.reason is not None and stopped.reason.code == "unstorable"
    assert stopped.wake_at is None
    assert stopped.history[-1].event == "saga.failed"
    clock.now += timedelta(days=1)
    assert await service.fire_due_timers() == 0  # never again
