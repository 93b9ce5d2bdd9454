"""Parallel groups (SPEC §4 rule 8): fork, join, failure, abort, compensation by branch."""

from __future__ import annotations

from .conversation import Conversation, command, group, saga_of

TRIP = saga_of(
    command("before"),
    group(
        "travel",
        flight=[command("flight"), command("seat")],
        hotel=[command("hotel"), command("breakfast", undo=False)],
    ),
    command("after"),
    timeout="10m",
)


def _in_group() -> Conversation:
    talk = Conversation(TRIP)
    talk.start()
    assert talk.succeed("before") == [("action", "flight", 1), ("action", "hotel", 1)]
    return talk


def test_a_group_starts_every_branch_and_joins_when_all_have_ended() -> None:
    talk = _in_group()
    assert talk.succeed("flight") == [("action", "seat", 1)]
    assert talk.succeed("hotel") == [("action", "breakfast", 1)]
    assert talk.succeed("seat") == []  # the hotel branch is still running
    assert talk.succeed("breakfast") == [("action", "after", 1)]
    assert "group.succeeded" in talk.events()
    assert talk.succeed("after") == []
    assert talk.status == "completed"


def test_a_failing_branch_aborts_the_others_and_compensates_branches_then_before() -> None:
    talk = _in_group()
    talk.succeed("flight")  # seat is now in flight
    assert talk.fail("hotel") == [("compensation", "seat", 1)]
    assert talk.statuses() == {
        "before": "succeeded",
        "flight": "succeeded",
        "seat": "compensating",  # aborted in flight: unknown outcome, compensated
        "hotel": "failed",
        "breakfast": "pending",
        "after": "pending",
    }
    assert talk.state.step("seat").unknown
    assert talk.succeed("seat", attempt=1) == []  # the late action reply changes nothing
    assert talk.succeed("seat", kind="compensation") == [("compensation", "flight", 1)]
    assert talk.succeed("flight", kind="compensation") == [("compensation", "before", 1)]
    assert talk.succeed("before", kind="compensation") == []
    assert talk.status == "compensated"
    assert talk.state.reason is not None and talk.state.reason.code == "boom"


def test_branches_are_compensated_concurrently_and_before_waits_for_all() -> None:
    talk = _in_group()
    talk.succeed("flight")
    talk.succeed("hotel")
    talk.succeed("seat")
    # breakfast (no compensation) fails: the flight branch and the hotel branch undo at once
    assert talk.fail("breakfast") == [("compensation", "seat", 1), ("compensation", "hotel", 1)]
    assert talk.succeed("hotel", kind="compensation") == []
    assert talk.succeed("seat", kind="compensation") == [("compensation", "flight", 1)]
    assert talk.succeed("flight", kind="compensation") == [("compensation", "before", 1)]
    talk.succeed("before", kind="compensation")
    assert talk.status == "compensated"


def test_no_step_starts_in_any_branch_after_the_group_failed() -> None:
    talk = _in_group()
    talk.fail("hotel")
    # flight was in flight and is aborted: its late success starts nothing
    assert talk.step("flight") == "compensating"
    assert talk.succeed("flight", attempt=1) == []
    assert talk.step("seat") == "pending"


def test_a_cancel_during_a_group_aborts_every_branch_and_compensates() -> None:
    talk = _in_group()
    talk.succeed("flight")
    transition = talk.cancel()
    assert transition.refused is None
    assert {c.headers["x-saga-step"] for c in transition.commands} == {"seat", "hotel"}
    assert talk.step("seat") == talk.step("hotel") == "compensating"
    assert "step.aborted" in talk.events()


def test_the_deadline_during_a_group_does_the_same() -> None:
    talk = _in_group()
    talk.fire(talk.state.deadline)
    assert talk.status == "compensating"
    assert talk.state.reason is not None and talk.state.reason.code == "saga_timeout"
    assert {talk.step("flight"), talk.step("hotel")} == {"compensating"}


def test_a_compensation_exhausted_in_one_branch_lets_the_other_finish_then_fails() -> None:
    talk = _in_group()
    talk.succeed("flight")
    talk.succeed("hotel")
    talk.succeed("seat")
    talk.fail("breakfast")
    assert talk.fail("seat", kind="compensation") == []  # not retryable: exhausted
    assert talk.status == "compensating"  # hotel's compensation is still in flight
    assert talk.succeed("hotel", kind="compensation") == []
    assert talk.status == "failed" and talk.step("seat") == "compensation_failed"
    assert talk.step("before") == "succeeded"  # before waits for the group's branches
    transition = talk.retry()
    assert [c.headers["x-idempotency-key"] for c in transition.commands] == [
        "s-1:seat:compensation:r1"
    ]
    assert talk.succeed("seat", kind="compensation") == [("compensation", "flight", 1)]


def test_a_retried_branch_step_counts_as_one_failure_only_when_exhausted() -> None:
    saga = saga_of(
        group(
            "g",
            a=[command("a", retry={"max_attempts": 2, "backoff": "1s"})],
            b=[command("b")],
        )
    )
    talk = Conversation(saga)
    assert talk.start() == [("action", "a", 1), ("action", "b", 1)]
    assert talk.fail("a", retryable=True) == []
    assert talk.succeed("b") == []
    assert talk.fire() == [("action", "a", 2)]
    assert talk.succeed("a") == []
    assert talk.status == "completed"
