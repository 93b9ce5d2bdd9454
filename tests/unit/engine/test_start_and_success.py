"""Start, success replies and completion: the happy rows of the transition table."""

from __future__ import annotations

from datetime import timedelta

import pytest

from coordinator.engine import Options
from schemas.envelope import idempotency_key

from .conversation import ORDER_INPUT, T0, Conversation, definition, linear


def test_start_creates_the_instance_and_sends_attempt_1_of_the_first_step() -> None:
    talk = Conversation(definition())
    assert talk.start() == [("action", "reserve-stock", 1)]
    state = talk.state
    assert state.status == "running"
    assert (state.definition, state.definition_version) == ("order-fulfillment", 1)
    assert state.key == "k-1" and state.input == ORDER_INPUT
    assert [s.status for s in state.steps] == ["running"] + ["pending"] * 4
    assert state.created_at == state.updated_at == T0
    assert state.deadline == T0 + timedelta(minutes=10)
    assert state.revision == 1
    assert state.wake_at == T0 + timedelta(seconds=30)
    started = state.history[0]
    assert started.event == "saga.started" and started.status == "running"
    assert started.detail["source"] == "event:order.placed" and started.detail["key"] == "k-1"
    assert [e.event for e in state.history] == ["saga.started", "action.sent"]
    phase = state.steps[0].action
    assert (phase.attempt, phase.budget_start, phase.waiting) == (1, 1, True)
    assert phase.started_at == T0 and phase.deadline == T0 + timedelta(seconds=30)


def test_a_command_carries_every_contract_property_and_header() -> None:
    talk = Conversation(definition(), options=Options(reply_to="coord-a"))
    talk.start(traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    (command,) = talk.last.commands if talk.last else []
    assert command.message_id == "s-1:reserve-stock:action:1"
    assert command.routing_key == "inventory.reserve_stock"
    assert command.type == "reserve_stock"
    assert command.reply_to == "coord-a"
    assert command.timestamp == T0
    assert command.headers == {
        "x-saga-id": "s-1",
        "x-saga-name": "order-fulfillment",
        "x-saga-version": 1,
        "x-saga-step": "reserve-stock",
        "x-saga-kind": "action",
        "x-saga-attempt": 1,
        "x-idempotency-key": "s-1:reserve-stock:action",
        "x-deadline": "2026-01-01T12:00:30Z",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    assert command.body == {"order_id": "o-1", "items": [{"sku": "a", "qty": 2}]}
    assert talk.state.outbox == [command]


def test_without_a_trace_there_is_no_traceparent_header() -> None:
    talk = Conversation(definition())
    talk.start()
    assert talk.last is not None
    assert "traceparent" not in talk.last.commands[0].headers


def test_the_command_body_is_a_copy_of_the_saga_input() -> None:
    talk = Conversation(definition())
    talk.start()
    assert talk.last is not None
    talk.last.commands[0].body["items"].append("x")
    assert talk.state.input["items"] == [{"sku": "a", "qty": 2}]


def test_success_records_the_output_and_sends_the_next_step_with_step_outputs() -> None:
    talk = Conversation(definition())
    talk.start()
    assert talk.succeed("reserve-stock", {"reservation_id": "r-17"}) == [("action", "notify", 1)]
    assert talk.step("reserve-stock") == "succeeded"
    assert talk.state.step("reserve-stock").output == {"reservation_id": "r-17"}
    assert talk.state.step("reserve-stock").action.finished_at == talk.now
    assert talk.last is not None
    assert talk.last.commands[0].body == {"order_id": "o-1", "key": "k-1"}
    assert talk.last.commands[0].routing_key == "mailer.send_mail"


def test_success_of_the_last_step_completes_the_saga() -> None:
    talk = Conversation(definition())
    talk.start()
    steps = ["reserve-stock", "notify", "charge-payment", "ship-order"]
    for step, following in zip(steps, [*steps[1:], "invoice"], strict=True):
        assert talk.succeed(step, {"reservation_id": "r"}) == [("action", following, 1)]
    assert talk.succeed("invoice") == []
    assert talk.status == "completed"
    assert set(talk.statuses().values()) == {"succeeded"}
    assert talk.state.wake_at is None
    assert talk.events()[-1] == "saga.completed"
    assert "pivot.passed" in talk.events()
    assert talk.state.revision == 6


def test_the_idempotency_key_is_the_contract_one() -> None:
    assert idempotency_key("s-1", "a", "compensation") == "s-1:a:compensation"


def test_a_first_step_whose_input_cannot_resolve_fails_without_sending() -> None:
    saga = linear("a", "b", input={"x": "${input.missing}"})
    talk = Conversation(saga)
    assert talk.start(input={"other": 1}) == []
    assert talk.step("a") == "failed"
    assert talk.status == "compensated"
    error = talk.state.step("a").action.error
    assert error is not None and error.code == "reference_missing" and not error.retryable
    assert "input.missing" in error.message and "steps[0].input" in error.message
    assert talk.state.step("a").action.attempt == 0
    assert talk.state.outbox == []
    assert "action.unsendable" in talk.events()


@pytest.mark.parametrize("template", ["${input.items}", "just text", 7])
def test_a_body_that_is_not_a_json_object_is_invalid_input(template: object) -> None:
    saga = linear("a", input=template)
    talk = Conversation(saga)
    assert talk.start(input={"items": [1, 2]}) == []
    error = talk.state.step("a").action.error
    assert error is not None and error.code == "invalid_input"
    assert "steps[0].input" in error.message and "JSON object" in error.message
    assert talk.status == "compensated"
