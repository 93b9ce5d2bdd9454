"""Saga deadline, cancel, the pivot and the operator's retry."""

from __future__ import annotations

from datetime import timedelta

from schemas.envelope import idempotency_key

from .conversation import Conversation, definition, linear


def _past_pivot() -> Conversation:
    talk = Conversation(definition())
    talk.start()
    talk.succeed("reserve-stock", {"reservation_id": "r-1"})
    talk.succeed("notify")
    talk.succeed("charge-payment")
    talk.succeed("ship-order")
    return talk


# -- saga deadline -----------------------------------------------------------------------


def test_the_saga_deadline_aborts_the_running_step_and_compensates_it() -> None:
    saga = linear("a", "b", "c", saga_timeout="1m", retry={"max_attempts": 10})
    talk = Conversation(saga, random=0.0)
    talk.start()
    talk.succeed("a")
    talk.advance(59)
    talk.succeed("b")  # c is in flight when the deadline comes
    assert talk.state.wake_at == talk.state.deadline
    assert talk.fire() == [("compensation", "c", 1)]
    assert talk.statuses() == {"a": "succeeded", "b": "succeeded", "c": "compensating"}
    assert talk.status == "compensating"
    assert talk.state.reason is not None and talk.state.reason.code == "saga_timeout"
    assert talk.state.step("c").action.waiting is False
    assert "saga.deadline_passed" in talk.events() and "step.aborted" in talk.events()
    # compensating: the deadline no longer applies, only the compensation's timeout does
    assert talk.state.wake_at == talk.state.step("c").compensation.deadline
    talk.succeed("c", kind="compensation")
    talk.succeed("b", kind="compensation")
    talk.succeed("a", kind="compensation")
    assert talk.status == "compensated"


def test_a_step_in_backoff_after_an_explicit_failure_is_not_compensated_on_abort() -> None:
    saga = linear("a", "b", saga_timeout="1m", retry={"max_attempts": 5, "backoff": "50s"})
    talk = Conversation(saga, random=0.99)
    talk.start()
    talk.succeed("a")
    talk.advance(30)
    talk.fail("b", retryable=True)  # retry at +~50s: after the saga deadline
    assert talk.state.wake_at == talk.state.deadline
    assert talk.fire() == [("compensation", "a", 1)]
    assert talk.step("b") == "aborted" and not talk.state.step("b").unknown


def test_the_deadline_is_ignored_after_the_pivot_and_recorded_once() -> None:
    saga = definition(timeout="1m")
    talk = Conversation(saga)
    talk.start()
    for step in ("reserve-stock", "notify", "charge-payment", "ship-order"):
        talk.succeed(step, {"reservation_id": "r"})
    invoice_deadline = talk.state.step("invoice").action.deadline
    assert talk.state.wake_at == invoice_deadline  # the saga deadline no longer counts
    talk.advance(120)
    talk.fire()
    assert talk.status == "running"
    talk.fire()
    ignored = [e for e in talk.state.history if e.event == "saga.deadline_ignored"]
    assert len(ignored) == 1 and ignored[0].detail == {"pivot": "ship-order"}


# -- cancel ------------------------------------------------------------------------------


def test_cancel_before_the_pivot_aborts_and_compensates() -> None:
    talk = Conversation(linear("a", "b"))
    talk.start()
    talk.succeed("a")
    transition = talk.cancel("changed my mind")
    assert transition.refused is None
    assert [c.headers["x-saga-step"] for c in transition.commands] == ["b"]
    assert talk.statuses() == {"a": "succeeded", "b": "compensating"}
    assert talk.state.reason is not None
    assert (talk.state.reason.code, talk.state.reason.message) == ("cancelled", "changed my mind")


def test_cancel_after_the_pivot_is_refused() -> None:
    talk = _past_pivot()
    before = talk.state
    transition = talk.cancel()
    assert transition.refused is not None and "pivot" in transition.refused
    assert "ship-order" in transition.refused
    assert transition.commands == []
    assert talk.status == "running"
    assert [s.status for s in talk.state.steps] == [s.status for s in before.steps]
    assert talk.events()[-1] == "cancel.refused"


def test_cancel_while_compensating_is_recorded_and_not_refused() -> None:
    talk = Conversation(linear("a", "b"))
    talk.start()
    talk.succeed("a")
    talk.fail("b")
    transition = talk.cancel()
    assert transition.refused is None and transition.commands == []
    assert talk.status == "compensating"
    assert talk.events()[-1] == "cancel.ignored"


def test_cancel_of_a_terminal_or_failed_saga_is_refused() -> None:
    talk = Conversation(linear("a"))
    talk.start()
    talk.succeed("a")
    transition = talk.cancel()
    assert transition.refused is not None and "completed" in transition.refused
    assert talk.status == "completed"
    talk = Conversation(linear("a", "b"))
    talk.start()
    talk.succeed("a")
    talk.fail("b")
    talk.fail("a", kind="compensation")
    assert talk.cancel().refused is not None and talk.status == "failed"


# -- pivot -------------------------------------------------------------------------------


def test_a_failure_after_the_pivot_fails_the_saga_without_compensating() -> None:
    talk = _past_pivot()
    assert talk.fail("invoice", "down") == []
    assert talk.status == "failed"
    assert talk.step("invoice") == "failed"
    assert talk.step("reserve-stock") == "succeeded"
    assert talk.state.reason is not None and talk.state.reason.code == "down"
    assert not [c for c in talk.state.outbox if c.headers["x-saga-kind"] == "compensation"]


def test_a_failure_of_the_pivot_itself_still_compensates() -> None:
    talk = Conversation(definition())
    talk.start()
    talk.succeed("reserve-stock", {"reservation_id": "r"})
    talk.succeed("notify")
    talk.succeed("charge-payment")
    assert talk.fail("ship-order") == [("compensation", "charge-payment", 1)]


# -- operator retry ----------------------------------------------------------------------


def test_retry_of_a_failed_action_after_the_pivot_gets_a_fresh_budget() -> None:
    talk = _past_pivot()
    talk.fail("invoice", "down", retryable=True)
    talk.fire()
    talk.fail("invoice", "down", retryable=True)
    talk.fire()
    talk.fail("invoice", "down", retryable=True)
    assert talk.status == "failed" and talk.step("invoice") == "failed"
    talk.advance(3600)
    transition = talk.retry()
    assert transition.refused is None
    assert [
        (c.headers["x-saga-step"], c.headers["x-saga-attempt"]) for c in transition.commands
    ] == [("invoice", 4)]
    # a new key, so that the participant runs it again instead of replaying its failure
    assert transition.commands[0].headers["x-idempotency-key"] == "s-1:invoice:action:r1"
    phase = talk.state.step("invoice").action
    assert (phase.attempt, phase.budget_start) == (4, 4)
    assert talk.status == "running" and talk.state.reason is None
    # the fresh budget allows 3 more attempts
    talk.fail("invoice", retryable=True)
    assert talk.fire() == [("action", "invoice", 5)]
    assert talk.last is not None
    assert talk.last.commands[0].headers["x-idempotency-key"] == "s-1:invoice:action:r1"
    assert talk.succeed("invoice") == []
    assert talk.status == "completed"


def test_retry_of_a_failed_compensation_resumes_it_with_a_fresh_budget() -> None:
    talk = Conversation(linear("a", "b", "c"))
    talk.start()
    talk.succeed("a")
    talk.succeed("b")
    talk.fail("c")
    talk.fail("b", kind="compensation", retryable=False)
    assert talk.status == "failed"
    transition = talk.retry()
    assert transition.refused is None
    assert [
        (c.headers["x-saga-step"], c.headers["x-saga-attempt"]) for c in transition.commands
    ] == [("b", 2)]
    assert transition.commands[0].headers["x-saga-kind"] == "compensation"
    assert transition.commands[0].headers["x-idempotency-key"] == "s-1:b:compensation:r1"
    assert talk.status == "compensating" and talk.step("b") == "compensating"
    assert talk.state.step("b").compensation.budget_start == 2
    assert talk.succeed("b", kind="compensation") == [("compensation", "a", 1)]
    talk.succeed("a", kind="compensation")
    assert talk.status == "compensated"


def test_retry_is_refused_unless_the_saga_failed() -> None:
    talk = Conversation(linear("a"))
    talk.start()
    transition = talk.retry()
    assert transition.refused is not None and "only a failed saga" in transition.refused
    assert transition.commands == [] and talk.events()[-1] == "retry.refused"
    talk.succeed("a")
    assert talk.retry().refused is not None


def test_the_deadline_counts_from_the_start() -> None:
    talk = Conversation(linear("a", saga_timeout="5m"))
    talk.start()
    assert talk.state.deadline == talk.now + timedelta(minutes=5)


def test_the_keys_of_a_step_and_kind_are_the_base_and_its_retry_variants() -> None:
    import pytest

    from schemas.codec import BadMessage, parse_idempotency_key

    for key, retry in (("s:a:action", 0), ("s:a:action:r1", 1), ("s:a:action:r12", 12)):
        assert parse_idempotency_key(key, "s", "a", "action") == retry
        assert idempotency_key("s", "a", "action", retry) == key
    for key in ("s:a:action:r0", "s:a:action:r", "s:a:action:r1x", "s:a:compensation", "x"):
        with pytest.raises(BadMessage):
            parse_idempotency_key(key, "s", "a", "action")


def test_x_deadline_is_the_earlier_of_the_attempt_timeout_and_the_saga_deadline() -> None:
    saga = linear("a", "b", saga_timeout="1m", timeout="45s")
    talk = Conversation(saga)
    talk.start()
    assert talk.last is not None
    assert talk.last.commands[0].headers["x-deadline"] == "2026-01-01T12:00:45Z"
    talk.advance(30)
    talk.succeed("a")
    assert talk.last.commands[0].headers["x-deadline"] == "2026-01-01T12:01:00Z"  # the saga's
    # the deadline: b is aborted in flight and compensated; a compensation is not bound
    # by the saga's deadline, only by its own timeout (the default 30s)
    assert talk.fire() == [("compensation", "b", 1)]
    assert talk.last.commands[0].headers["x-deadline"] == "2026-01-01T12:01:30Z"


def test_a_step_cut_short_by_a_cancel_is_aborted_not_timed_out() -> None:
    talk = Conversation(linear("a", "b"))
    talk.start()
    talk.succeed("a")
    talk.cancel()
    assert talk.state.step("b").unknown
    assert talk.step("b") == "compensating"
    talk.succeed("b", kind="compensation")
    talk.succeed("a", kind="compensation")
    assert talk.status == "compensated"
    assert talk.state.reason is not None and talk.state.reason.code == "cancelled"
    assert [e.detail["outcome"] for e in talk.state.history if e.event == "step.aborted"] == [
        "unknown"
    ]
