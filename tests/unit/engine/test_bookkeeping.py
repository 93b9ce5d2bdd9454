"""Ignored messages, history, revision, wake_at, the document round trip and misuse."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import coordinator.engine as engine_package
from coordinator.engine import (
    Options,
    ReplyReceived,
    SagaState,
    TimerFired,
    TriggerRepeated,
    handle,
)
from coordinator.errors import InvalidTransition
from schemas.envelope import SucceededReply

from .conversation import Conversation, definition, linear, sent

OK = SucceededReply(status="succeeded", output={})


def _ignored(talk: Conversation) -> dict[str, Any]:
    entry = talk.state.history[-1]
    assert entry.event == "reply.ignored"
    assert talk.last is not None and talk.last.changed and talk.last.commands == []
    return entry.detail


def test_a_duplicate_reply_is_recorded_and_changes_nothing_else() -> None:
    talk = Conversation(linear("a", "b"))
    talk.start()
    talk.succeed("a")
    steps = talk.state.model_dump()["steps"]
    assert talk.succeed("a", attempt=1) == []
    assert "not awaiting" in _ignored(talk)["reason"]
    assert talk.state.model_dump()["steps"] == steps


def test_a_late_reply_for_an_earlier_attempt_is_ignored() -> None:
    talk = Conversation(linear("a"))
    talk.start()
    talk.fail("a", retryable=True)
    talk.fire()
    assert talk.succeed("a", attempt=1) == []
    assert "late reply" in _ignored(talk)["reason"]
    assert talk.step("a") == "running" and talk.state.step("a").action.waiting


@pytest.mark.parametrize(
    ("step", "kind", "attempt", "reason"),
    [
        ("zzz", "action", 1, "unknown step"),
        ("a", "action", 7, "never sent"),
        ("a", "action", 0, "never sent"),
        ("a", "compensation", 1, "never sent"),
        ("a", "sideways", 1, "unknown kind"),
    ],
)
def test_replies_for_what_was_never_sent_are_ignored(
    step: str, kind: Any, attempt: int, reason: str
) -> None:
    talk = Conversation(linear("a"))
    talk.start()
    talk.feed(ReplyReceived(step=step, kind=kind, attempt=attempt, reply=OK, at=talk.now))
    assert reason in _ignored(talk)["reason"]
    assert talk.step("a") == "running"


def test_a_compensation_reply_for_a_step_without_compensation_is_ignored() -> None:
    talk = Conversation(definition())
    talk.start()
    talk.succeed("reserve-stock", {"reservation_id": "r"})
    talk.succeed("notify", kind="compensation", attempt=1)
    assert "has no compensation" in _ignored(talk)["reason"]


def test_replies_to_a_terminal_saga_are_ignored() -> None:
    talk = Conversation(linear("a"))
    talk.start()
    talk.succeed("a")
    talk.fail("a", attempt=1)
    detail = _ignored(talk)
    assert detail["reason"] == "the saga is completed" and detail["reply"] == "failed"
    assert talk.status == "completed"


def test_an_action_reply_after_the_abort_is_ignored() -> None:
    talk = Conversation(linear("a", "b"))
    talk.start()
    talk.succeed("a")
    talk.cancel()
    talk.succeed("b", attempt=1)
    assert "not awaiting" in _ignored(talk)["reason"]
    assert talk.step("b") == "compensating"


def test_a_repeated_trigger_is_recorded() -> None:
    talk = Conversation(linear("a"))
    talk.start()
    transition = talk.trigger_repeated()
    assert transition.changed and transition.commands == []
    assert talk.events()[-1] == "trigger.repeated"
    assert talk.state.history[-1].detail["source"] == "event:order.placed"


def test_every_history_entry_has_its_time_event_and_saga_status() -> None:
    talk = Conversation(linear("a", "b"))
    talk.start()
    talk.advance(5)
    talk.succeed("a")
    talk.advance(5)
    talk.fail("b")
    entries = talk.state.history
    assert [e.event for e in entries] == [
        "saga.started",
        "action.sent",
        "action.succeeded",
        "action.sent",
        "action.failed",
        "step.failed",
        "saga.compensating",
        "compensation.sent",
    ]
    assert [e.at - entries[0].at for e in entries] == [timedelta(0)] * 2 + [
        timedelta(seconds=5)
    ] * 2 + [timedelta(seconds=10)] * 4
    assert entries[3].step == "b" and entries[3].kind == "action" and entries[3].attempt == 1
    assert [e.status for e in entries][-2:] == ["compensating", "compensating"]
    assert talk.state.revision == 3
    assert talk.state.updated_at == talk.now


def test_wake_at_is_the_earliest_pending_timer_or_none() -> None:
    talk = Conversation(linear("a", saga_timeout="10s", timeout="30s"))
    talk.start()
    assert talk.state.wake_at == talk.state.deadline  # 10s saga deadline < 30s attempt
    talk.succeed("a")
    assert talk.state.wake_at is None


def test_one_timer_handles_everything_due_in_order() -> None:
    talk = Conversation(linear("a", saga_timeout="10s", timeout="5s"), random=0.0)
    talk.start()
    talk.advance(20)
    # due: the attempt deadline (5s), then the saga deadline (10s)
    assert sent(talk.tick().commands) == [("compensation", "a", 1)]
    assert talk.events()[2:] == [
        "action.timed_out",
        "action.retry_scheduled",
        "saga.deadline_passed",
        "step.aborted",
        "saga.compensating",
        "compensation.sent",
    ]
    assert talk.step("a") == "compensating"
    assert talk.state.reason is not None and talk.state.reason.code == "saga_timeout"


def test_a_timer_with_nothing_due_returns_the_state_unchanged() -> None:
    talk = Conversation(linear("a"))
    talk.start()
    talk.succeed("a")
    before = talk.state
    transition = talk.tick()
    assert not transition.changed and transition.state is before


def test_the_history_is_bounded_and_drops_are_counted() -> None:
    talk = Conversation(linear("a"), options=Options(history_limit=3))
    talk.start()
    for source in ("event:x", "event:y", "event:z", "api"):
        talk.feed(TriggerRepeated(at=talk.now, source=source))
    assert len(talk.state.history) == 3
    assert talk.state.history_dropped == 3
    assert talk.events() == ["trigger.repeated"] * 3


def test_repeats_of_one_message_are_counted_on_one_entry_and_keep_transitions() -> None:
    talk = Conversation(linear("a", "b"), options=Options(history_limit=4))
    talk.start()
    talk.succeed("a")
    for _ in range(50):
        talk.trigger_repeated()
        talk.succeed("a", attempt=1)  # a duplicate reply
    assert talk.events() == [
        "action.succeeded",
        "action.sent",
        "trigger.repeated",
        "reply.ignored",
    ]
    assert talk.state.history_dropped == 2
    trigger, ignored = talk.state.history[-2:]
    assert trigger.detail["repeats"] == 50
    assert ignored.step == "a" and ignored.detail["repeats"] == 50


def test_the_state_survives_a_document_round_trip() -> None:
    talk = Conversation(definition(), saga_id="abc")
    talk.start(traceparent="00-aa-bb-01")
    talk.succeed("reserve-stock", {"reservation_id": "r"})
    talk.fail("notify", retryable=True)
    document = talk.state.to_document()
    assert document["_id"] == "abc" and "id" not in document
    assert SagaState.from_document(document) == talk.state


def test_naive_datetimes_from_the_store_are_taken_as_utc() -> None:
    talk = Conversation(linear("a"))
    talk.start()
    document = talk.state.to_document()
    naive = SagaState.from_document(
        {
            **document,
            "deadline": None,
            "steps": [
                {
                    **step,
                    "action": {
                        **step["action"],
                        "deadline": step["action"]["deadline"].replace(tzinfo=None),
                    },
                }
                for step in document["steps"]
            ],
        }
    )
    deadline = talk.state.step("a").action.deadline
    assert deadline is not None
    transition = handle(linear("a"), naive, TimerFired(at=deadline), random=lambda: 0.5)
    assert transition.changed and transition.state.step("a").action.retry_at is not None


def test_misuse_raises_invalid_transition() -> None:
    talk = Conversation(linear("a"))
    talk.start()
    state = talk.state
    with pytest.raises(InvalidTransition, match="version"):
        handle(
            linear("a").model_copy(update={"version": 2}),
            state,
            TimerFired(at=talk.now),
            random=lambda: 0.5,
        )
    with pytest.raises(InvalidTransition, match="steps"):
        handle(linear("a", "b"), state, TimerFired(at=talk.now), random=lambda: 0.5)
    with pytest.raises(InvalidTransition, match="handle\\(\\) takes"):
        handle(linear("a"), state, "hello", random=lambda: 0.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidTransition, match="SagaState"):
        handle(linear("a"), {"id": "x"}, TimerFired(at=talk.now), random=lambda: 0.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidTransition, match="random"):
        talk.random = lambda: 1.5
        talk.fail("a", retryable=True)
    assert talk.state is state


def test_the_package_exports_its_public_api() -> None:
    for name in engine_package.__all__:
        assert hasattr(engine_package, name), name
    assert {"Options", "start", "handle", "Transition", "SagaState"} <= set(engine_package.__all__)


def test_the_given_state_is_never_mutated() -> None:
    talk = Conversation(linear("a", "b"))
    talk.start()
    original = talk.state
    snapshot = original.model_dump()
    talk.succeed("a")
    talk.fail("b", retryable=True)
    talk.cancel()
    assert original.model_dump() == snapshot
    assert original.revision == 1 and len(original.outbox) == 1
