"""Failure replies, retries with backoff, attempt timeouts and exhaustion."""

from __future__ import annotations

from datetime import timedelta

from .conversation import Conversation, definition, linear


def test_retryable_failure_then_success_retries_with_the_same_key_and_attempt_2() -> None:
    talk = Conversation(definition(), random=0.5)
    talk.start()
    assert talk.fail("reserve-stock", "busy", retryable=True) == []
    phase = talk.state.step("reserve-stock").action
    # First failure: 1s nominal, equal jitter with random()=0.5 → 0.5 + 0.25 = 0.75 s.
    assert phase.retry_at == talk.now + timedelta(seconds=0.75)
    assert not phase.waiting and phase.deadline is None
    assert phase.error is not None and phase.error.code == "busy"
    assert talk.state.wake_at == phase.retry_at
    assert talk.step("reserve-stock") == "running" and talk.status == "running"
    assert talk.fire() == [("action", "reserve-stock", 2)]
    assert talk.last is not None
    (command,) = talk.last.commands
    assert command.headers["x-idempotency-key"] == "s-1:reserve-stock:action"
    assert command.headers["x-saga-attempt"] == 2
    assert command.message_id == "s-1:reserve-stock:action:2"
    assert talk.succeed("reserve-stock", {"reservation_id": "r"}) == [("action", "notify", 1)]
    assert talk.state.step("reserve-stock").action.error is None


def test_backoff_grows_by_the_multiplier_with_equal_jitter() -> None:
    saga = linear("a", retry={"max_attempts": 5, "backoff": "1s", "multiplier": 3.0})
    draws = iter([0.0, 0.999, 0.5])
    talk = Conversation(saga, random=lambda: next(draws))
    talk.start()
    delays = []
    for _ in range(3):
        talk.fail("a", retryable=True)
        retry_at = talk.state.step("a").action.retry_at
        assert retry_at is not None
        delays.append((retry_at - talk.now).total_seconds())
        talk.fire()
    # nominal 1s, 3s, 9s; jitter: d/2 + r*d/2
    assert delays == [0.5, 1.5 + 0.999 * 1.5, 4.5 + 0.5 * 4.5]


def test_backoff_is_capped_at_max_backoff() -> None:
    retry = {"max_attempts": 6, "backoff": "10s", "multiplier": 10.0, "max_backoff": "30s"}
    talk = Conversation(linear("a", retry=retry), random=0.0)
    talk.start()
    delays = []
    for _ in range(4):
        talk.fail("a", retryable=True)
        retry_at = talk.state.step("a").action.retry_at
        assert retry_at is not None
        delays.append((retry_at - talk.now).total_seconds())
        talk.fire()
    assert delays == [5.0, 15.0, 15.0, 15.0]


def test_retries_are_exhausted_after_max_attempts() -> None:
    talk = Conversation(linear("a", "b", retry={"max_attempts": 2}))
    talk.start()
    talk.succeed("a")
    talk.fail("b", retryable=True)
    assert talk.fire() == [("action", "b", 2)]
    assert talk.fail("b", retryable=True) == [("compensation", "a", 1)]
    assert talk.step("b") == "failed"
    assert talk.state.step("b").action.retry_at is None
    assert talk.status == "compensating"
    assert talk.state.reason is not None and talk.state.reason.code == "boom"


def test_a_non_retryable_failure_fails_the_step_at_once() -> None:
    talk = Conversation(linear("a", "b"))
    talk.start()
    talk.succeed("a")
    assert talk.fail("b", "declined") == [("compensation", "a", 1)]
    assert talk.statuses() == {"a": "compensating", "b": "failed"}
    assert talk.state.step("b").action.attempt == 1
    assert talk.state.reason is not None and talk.state.reason.code == "declined"


def test_an_attempt_timeout_counts_as_a_retryable_failure() -> None:
    talk = Conversation(linear("a"), random=0.0)
    talk.start()
    deadline = talk.state.step("a").action.deadline
    assert deadline is not None and talk.state.wake_at == deadline
    assert talk.fire() == []
    phase = talk.state.step("a").action
    assert phase.error is not None and phase.error.code == "attempt_timeout"
    assert phase.retry_at == deadline + timedelta(seconds=0.5)
    assert "action.timed_out" in talk.events()
    assert talk.fire() == [("action", "a", 2)]


def test_a_timer_before_the_attempt_deadline_changes_nothing() -> None:
    talk = Conversation(linear("a"))
    talk.start()
    before = talk.state
    talk.advance(29)
    transition = talk.tick()
    assert transition.changed is False and transition.state is before
    assert transition.state.revision == 1


def test_the_last_attempt_timing_out_makes_the_step_timed_out_and_compensated() -> None:
    talk = Conversation(linear("a", "b", retry={"max_attempts": 1}))
    talk.start()
    talk.succeed("a")
    assert talk.fire() == [("compensation", "b", 1)]
    assert talk.step("b") == "compensating"
    assert talk.succeed("b", kind="compensation") == [("compensation", "a", 1)]
    assert talk.succeed("a", kind="compensation") == []
    assert talk.statuses() == {"a": "compensated", "b": "compensated"}
    assert talk.status == "compensated"
    assert "step.timed_out" in talk.events()


def test_a_timed_out_step_without_compensation_is_skipped() -> None:
    saga = definition()
    talk = Conversation(saga)
    talk.start()
    talk.succeed("reserve-stock", {"reservation_id": "r-1"})
    sent = [talk.fire() for _ in range(5)]  # notify: 3 attempts, each one times out
    assert sent == [
        [],
        [("action", "notify", 2)],
        [],
        [("action", "notify", 3)],
        [("compensation", "reserve-stock", 1)],
    ]
    assert talk.step("notify") == "timed_out"
    assert talk.status == "compensating"
    assert talk.state.step("reserve-stock").status == "compensating"
    skipped = [e for e in talk.state.history if e.event == "compensation.skipped"]
    assert [e.step for e in skipped] == ["notify"]
