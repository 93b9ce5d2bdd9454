"""The runtime's pure parts, without servers: the AMQP codec, and ``SagaService`` over the
in-memory store with a recording publisher and a hand-driven clock.

These run in milliseconds and pin down the decisions the end-to-end tests only observe:
what is rejected and why, when commands are published, how conflicts and lost publishes
are recovered.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from coordinator.adapters.memory import InMemorySagaStore
from coordinator.adapters.rabbit import RawMessage, Undecodable, decode_event, decode_reply
from coordinator.engine.engine import Options
from coordinator.engine.messages import ReplyReceived
from coordinator.engine.state import Command, SagaState
from coordinator.errors import BrokerUnavailable, SagaNotFound, UnknownDefinition
from coordinator.ports import SagaStore
from coordinator.service import MessageRejected, SagaService
from schemas.definition import SagaDefinition
from schemas.envelope import SucceededReply

# -- codec --------------------------------------------------------------------------------

HEADERS = {
    "x-saga-id": "s-1",
    "x-saga-step": "reserve",
    "x-saga-kind": "action",
    "x-saga-attempt": 2,
    "x-idempotency-key": "s-1:reserve:action",
}


def raw(body: Any, headers: dict[str, Any] | None = None, **kw: Any) -> RawMessage:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return RawMessage(body=data, routing_key="coordinator", headers=headers or {}, **kw)


def test_a_contract_reply_decodes() -> None:
    reply = decode_reply(
        raw({"status": "succeeded", "output": {"id": 1}}, HEADERS, correlation_id="s-1"),
        max_bytes=1024,
    )
    assert (reply.saga_id, reply.step, reply.kind, reply.attempt) == ("s-1", "reserve", "action", 2)
    assert reply.reply.status == "succeeded"


def test_header_values_may_arrive_as_bytes_or_digit_strings() -> None:
    headers = {k: str(v).encode() for k, v in HEADERS.items()}
    assert decode_reply(raw({"status": "succeeded"}, headers), max_bytes=1024).attempt == 2


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"\xff\xfe", HEADERS, "not JSON"),
        (b"[1]", HEADERS, "JSON list, not a JSON object"),
        ({"status": "succeeded"}, {}, "without the x-saga-id header"),
        ({"status": "succeeded"}, {**HEADERS, "x-saga-kind": "redo"}, "x-saga-kind"),
        ({"status": "succeeded"}, {**HEADERS, "x-saga-attempt": 0}, "x-saga-attempt"),
        ({"status": "succeeded"}, {**HEADERS, "x-saga-attempt": True}, "x-saga-attempt"),
        ({"status": "succeeded"}, {**HEADERS, "x-idempotency-key": "x"}, "x-idempotency-key"),
        ({"status": "done"}, HEADERS, "unknown reply status 'done'"),
        ({"status": "failed", "error": {}}, HEADERS, "invalid reply body: error.code"),
        ({"status": "succeeded", "output": "x" * 2000}, HEADERS, "over the limit of 1024"),
    ],
)
def test_a_broken_reply_is_rejected_with_the_reason(
    body: Any, headers: dict[str, Any], reason: str
) -> None:
    with pytest.raises(Undecodable) as rejected:
        decode_reply(raw(body, headers), max_bytes=1024)
    assert reason in rejected.value.reason


def test_a_reply_whose_correlation_id_names_another_saga_is_rejected() -> None:
    with pytest.raises(Undecodable, match="correlation_id"):
        decode_reply(raw({"status": "succeeded"}, HEADERS, correlation_id="s-2"), max_bytes=1024)


def test_an_event_is_any_json_object() -> None:
    event = decode_event(
        RawMessage(b'{"a": 1}', "order.placed", {"traceparent": b"00-x"}, "m-1"), max_bytes=1024
    )
    assert (event.event_type, event.body, event.message_id) == ("order.placed", {"a": 1}, "m-1")
    assert event.traceparent == "00-x"
    with pytest.raises(Undecodable, match="not a JSON object"):
        decode_event(RawMessage(b'"text"', "order.placed", {}), max_bytes=1024)


# -- service ------------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

DEFINITION = SagaDefinition.model_validate(
    {
        "name": "order",
        "version": 1,
        "trigger": {"event": "order.placed", "key": "${event.order_id}"},
        "defaults": {"timeout": "10s", "retry": {"max_attempts": 2, "backoff": "1s"}},
        "steps": [
            {"name": "reserve", "participant": "a", "command": "reserve"},
            {"name": "charge", "participant": "b", "command": "charge"},
        ],
    }
)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[Command] = []
        self.down = False

    async def publish_commands(self, commands: Sequence[Command]) -> None:
        if self.down:
            raise BrokerUnavailable("RabbitMQ: publish failed")
        self.published.extend(commands)


class RacingStore(InMemorySagaStore):
    """Loses the next ``races`` saves, as if another replica had saved first."""

    races = 0

    async def save_saga(
        self, state: SagaState, expected_revision: int, base: SagaState | None = None
    ) -> bool:
        if self.races:
            self.races -= 1
            return False
        return await super().save_saga(state, expected_revision, base)


async def service_on(
    store: SagaStore,
    publisher: RecordingPublisher,
    clock: Callable[[], datetime],
    ids: Iterator[str],
) -> SagaService:
    """A service with the tests' options, randomness and relay age, its definitions loaded."""
    service = SagaService(
        store,
        publisher,
        options=Options(),
        clock=clock,
        random=lambda: 0.5,
        new_id=lambda: next(ids),
        relay_age=timedelta(seconds=5),
    )
    await service.refresh_definitions()
    return service


async def make_service(
    store: RacingStore | None = None,
) -> tuple[SagaService, RacingStore, RecordingPublisher, Clock]:
    store = store or RacingStore()
    publisher, clock = RecordingPublisher(), Clock()
    await store.register_definition(DEFINITION, "source")
    service = await service_on(store, publisher, clock, (f"s-{n}" for n in itertools.count(1)))
    return service, store, publisher, clock


def succeeded(step: str, attempt: int = 1) -> ReplyReceived:
    return ReplyReceived(
        step=step, kind="action", attempt=attempt, reply=SucceededReply(status="succeeded"), at=T0
    )


async def test_an_event_starts_one_saga_per_key_and_records_repeats() -> None:
    service, store, publisher, _ = await make_service()
    assert await service.on_event("order.placed", {"order_id": "o-1"}, "m-1", None) == 1
    [saga] = store.sagas.values()
    assert saga.outbox  # published, and the clear is queued ...
    assert await service.flush_outbox() == 1
    assert store.sagas[saga.id].outbox == []  # ... until the batch is flushed
    assert await service.on_event("order.placed", {"order_id": "o-1"}, "m-2", None) == 0
    assert [c.routing_key for c in publisher.published] == ["a.reserve"]
    assert [h.event for h in store.sagas[saga.id].history][-1] == "trigger.repeated"


async def test_a_trigger_key_that_cannot_be_resolved_rejects_the_event() -> None:
    service, store, _, _ = await make_service()
    with pytest.raises(MessageRejected, match="order_id"):
        await service.on_event("order.placed", {"id": 1}, None, None)
    with pytest.raises(MessageRejected, match="business key"):
        await service.on_event("order.placed", {"order_id": ["x"]}, None, None)
    assert store.sagas == {}


async def test_a_lost_race_is_recomputed_and_applied_once() -> None:
    service, store, publisher, _ = await make_service()
    saga, created = await service.start_saga("order", {}, key="k")
    assert created
    store.races = 3
    transition = await service.on_reply(saga.id, succeeded("reserve"))
    assert transition is not None and transition.state.revision == 2
    assert service.stats.conflicts == 3
    assert [c.routing_key for c in publisher.published] == ["a.reserve", "b.charge"]
    assert store.sagas[saga.id].revision == 2


async def test_commands_left_unpublished_are_relayed_once_old_enough() -> None:
    service, store, publisher, clock = await make_service()
    publisher.down = True
    saga, _ = await service.start_saga("order", {})
    assert publisher.published == [] and len(store.sagas[saga.id].outbox) == 1
    publisher.down = False
    assert await service.relay_unpublished() == 0  # too young: its publisher may be at work
    clock.now += timedelta(seconds=6)
    assert await service.relay_unpublished() == 1
    await service.flush_outbox()
    assert [c.routing_key for c in publisher.published] == ["a.reserve"]
    assert store.sagas[saga.id].outbox == []


async def test_outbox_clears_wait_their_linger_each_and_skip_what_a_save_dropped() -> None:
    service, store, _, clock = await make_service()
    early, _ = await service.start_saga("order", {}, key="early")
    clock.now += timedelta(seconds=2)
    late, _ = await service.start_saga("order", {}, key="late")
    answered, _ = await service.start_saga("order", {}, key="answered")
    await service.on_reply(answered.id, succeeded("reserve"))  # its save dropped a.reserve
    assert await service.flush_outbox(queued_before=T0 + timedelta(seconds=1)) == 1
    assert store.sagas[early.id].outbox == []
    assert len(store.sagas[late.id].outbox) == 1  # queued after the cut: still waiting
    assert await service.flush_outbox() == 2  # late's a.reserve, answered's b.charge
    assert store.sagas[late.id].outbox == [] and store.sagas[answered.id].outbox == []
    assert service.stats.outbox_cleared == 3


async def test_a_due_timer_sends_the_next_attempt() -> None:
    service, _, publisher, clock = await make_service()
    await service.start_saga("order", {})
    clock.now += timedelta(seconds=11)
    assert await service.fire_due_timers() == 1
    headers = [c.headers["x-saga-attempt"] for c in publisher.published]
    assert headers[0] == 1  # attempt 2 waits for its backoff
    clock.now += timedelta(seconds=2)
    assert await service.fire_due_timers() == 1
    assert [c.headers["x-saga-attempt"] for c in publisher.published] == [1, 2]


async def test_unknown_sagas_and_definitions() -> None:
    service, _, _, _ = await make_service()
    assert await service.on_reply("nope", succeeded("reserve")) is None
    with pytest.raises(SagaNotFound):
        await service.cancel("nope", "why")
    with pytest.raises(UnknownDefinition):
        await service.start_saga("other", {})
