"""Compensation: reverse order, skipped steps, retries, exhaustion and unresolvable input."""

from __future__ import annotations

from datetime import timedelta

from .conversation import Conversation, definition, linear


def _order_failing_at_charge() -> Conversation:
    talk = Conversation(definition())
    talk.start()
    talk.succeed("reserve-stock", {"reservation_id": "r-17"})
    talk.succeed("notify")
    return talk


def test_compensation_runs_in_reverse_order_skipping_steps_without_one() -> None:
    talk = Conversation(linear("a", "b", "c", "d"))
    talk.start()
    for step in ("a", "b", "c"):
        talk.succeed(step)
    assert talk.fail("d", "nope") == [("compensation", "c", 1)]
    assert talk.status == "compensating"
    assert talk.succeed("c", kind="compensation") == [("compensation", "b", 1)]
    assert talk.succeed("b", kind="compensation") == [("compensation", "a", 1)]
    assert talk.succeed("a", kind="compensation") == []
    assert talk.statuses() == {
        "a": "compensated",
        "b": "compensated",
        "c": "compensated",
        "d": "failed",
    }
    assert talk.status == "compensated"
    assert talk.state.wake_at is None


def test_a_step_without_compensation_is_skipped_and_recorded() -> None:
    talk = _order_failing_at_charge()
    assert talk.fail("charge-payment", "card_declined") == [("compensation", "reserve-stock", 1)]
    assert talk.step("notify") == "succeeded"  # nothing to undo it with: left as it was
    assert talk.step("charge-payment") == "failed"  # failed explicitly: not compensated
    assert talk.last is not None
    (command,) = talk.last.commands
    assert command.routing_key == "inventory.release_stock"
    assert command.type == "release_stock"
    assert command.body == {"reservation_id": "r-17"}
    assert command.headers["x-idempotency-key"] == "s-1:reserve-stock:compensation"
    assert command.headers["x-saga-kind"] == "compensation"
    assert command.message_id == "s-1:reserve-stock:compensation:1"
    skipped = [e.step for e in talk.state.history if e.event == "compensation.skipped"]
    assert skipped == ["notify"]
    assert talk.succeed("reserve-stock", kind="compensation") == []
    assert talk.status == "compensated"


def test_a_compensation_retries_with_its_own_policy_and_timeout() -> None:
    talk = _order_failing_at_charge()
    talk.fail("charge-payment", "card_declined")
    deadline = talk.state.step("reserve-stock").compensation.deadline
    assert deadline == talk.now + timedelta(seconds=30)
    talk.fail("reserve-stock", "busy", kind="compensation", retryable=True)
    retry_at = talk.state.step("reserve-stock").compensation.retry_at
    # compensation policy: backoff 2s; random() = 0.5 → 1 + 0.5 = 1.5 s
    assert retry_at == talk.now + timedelta(seconds=1.5)
    assert talk.fire() == [("compensation", "reserve-stock", 2)]
    assert talk.succeed("reserve-stock", kind="compensation") == []
    assert talk.status == "compensated"


def test_an_exhausted_compensation_fails_the_saga() -> None:
    talk = _order_failing_at_charge()
    talk.fail("charge-payment", "card_declined")
    talk.fail("reserve-stock", "busy", kind="compensation", retryable=True)
    talk.fire()
    assert talk.fire() == []  # attempt 2 times out: the policy allows 2 attempts
    assert talk.step("reserve-stock") == "compensation_failed"
    assert talk.status == "failed"
    # The reason keeps the first cause; the compensation's own error is in the history.
    assert talk.state.reason is not None and talk.state.reason.code == "card_declined"
    assert talk.state.wake_at is None
    assert talk.events()[-1] == "saga.failed"
    assert talk.state.history[-1].detail["error"]["code"] == "attempt_timeout"


def test_a_non_retryable_compensation_failure_fails_the_saga() -> None:
    talk = Conversation(linear("a", "b", "c"))
    talk.start()
    talk.succeed("a")
    talk.succeed("b")
    talk.fail("c")
    assert talk.fail("b", "stuck", kind="compensation") == []
    assert talk.statuses() == {"a": "succeeded", "b": "compensation_failed", "c": "failed"}
    assert talk.status == "failed"


def test_a_compensation_whose_input_cannot_resolve_fails_the_saga_without_sending() -> None:
    talk = Conversation(definition())
    talk.start()
    talk.succeed("reserve-stock", {"no_reservation_id": True})
    talk.succeed("notify")
    assert talk.fail("charge-payment") == []
    assert talk.step("charge-payment") == "failed"
    assert talk.status == "failed"
    assert talk.step("reserve-stock") == "compensation_failed"
    error = talk.state.step("reserve-stock").compensation.error
    assert error is not None and error.code == "reference_missing"
    assert "steps.reserve-stock.output.reservation_id" in error.message
    assert talk.state.step("reserve-stock").compensation.attempt == 0


def test_a_later_step_whose_reference_is_missing_fails_and_compensates_earlier_ones() -> None:
    steps = linear("a", "b").model_dump()["steps"]
    steps[1]["input"] = {"id": "${steps.a.output.id}"}
    talk = Conversation(definition({"name": "refs", "version": 1, "steps": steps}))
    talk.start()
    assert talk.succeed("a", {"other": 1}) == [("compensation", "a", 1)]
    assert talk.step("b") == "failed"
    error = talk.state.step("b").action.error
    assert error is not None and error.code == "reference_missing"
    assert "steps.a.output.id" in error.message and "has no field 'id'" in error.message
    assert talk.state.reason == error


def test_a_timed_out_step_is_compensated_with_null_for_its_own_unknown_output() -> None:
    steps = linear("a", "b", retry={"max_attempts": 1}).model_dump()["steps"]
    steps[1]["compensation"]["input"] = {
        "booking": "${steps.b.output.booking_id}",
        "note": "undo ${steps.b.output.booking_id} of ${steps.a.output.id}",
    }
    talk = Conversation(definition({"name": "refs", "version": 1, "steps": steps}))
    talk.start()
    talk.succeed("a", {"id": "a-1"})
    assert talk.fire() == [("compensation", "b", 1)]
    body = talk.state.outbox[-1].body
    assert body == {"booking": None, "note": "undo  of a-1"}
    assert talk.step("b") == "compensating"
