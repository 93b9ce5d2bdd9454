"""Await steps (SPEC §4 rule 9) and ``when`` conditions (SPEC §2.1)."""

from __future__ import annotations

from coordinator.engine import SagaState

from .conversation import Conversation, command, group, saga_of, waits

ORDER = {"order_id": "o-1", "total": 1500}


def _waiting(**extra: object) -> Conversation:
    saga = saga_of(
        command("reserve"),
        waits("paid", **extra),
        command("ship"),
        timeout="1h",
    )
    talk = Conversation(saga)
    talk.start(input=ORDER)
    talk.succeed("reserve")
    assert talk.step("paid") == "waiting"
    return talk


def test_an_await_step_waits_and_exposes_what_it_waits_for() -> None:
    talk = _waiting()
    assert talk.last is not None and talk.last.commands == []
    [entry] = talk.state.awaiting
    assert (entry.step, entry.event, entry.value, entry.since) == ("paid", "paid", "o-1", talk.now)
    assert [a.step for a in talk.last.awaiting] == ["paid"]


def test_a_matching_event_completes_it_with_the_event_body_as_output() -> None:
    talk = _waiting()
    assert talk.event("paid", {"order_id": "o-1", "capture": "c-9"}) == [("action", "ship", 1)]
    assert talk.step("paid") == "succeeded"
    assert talk.state.step("paid").output == {"order_id": "o-1", "capture": "c-9"}
    assert talk.state.awaiting == []


def test_events_that_do_not_match_are_recorded_and_change_nothing() -> None:
    talk = _waiting()
    for event_type, body in [("paid", {"order_id": "o-2"}), ("other", {"order_id": "o-1"})]:
        assert talk.event(event_type, body, message_id=event_type + str(body)) == []
    assert talk.event("paid", {"order_id": 1}, message_id="n") == []  # "o-1" is not 1
    assert talk.step("paid") == "waiting"
    assert talk.events().count("event.ignored") == 3


def test_match_value_gives_the_runtime_the_value_to_look_up() -> None:
    from coordinator.engine import match_value
    from schemas.definition import AwaitStep

    step = saga_of(waits("w")).leaves[0].step
    assert isinstance(step, AwaitStep)
    assert match_value(step, {"order_id": "o-1"}) == "o-1"
    assert match_value(step, {"order_id": 7}) == 7
    assert match_value(step, {"order_id": True}) is None
    assert match_value(step, {"order_id": {"x": 1}}) is None
    assert match_value(step, {}) is None


def test_numbers_match_as_json_numbers() -> None:
    saga = saga_of(
        {"name": "w", "await": {"event": "e", "match": "${event.n}", "equals": "${input.n}"}}
    )
    talk = Conversation(saga)
    talk.start(input={"n": 7})
    talk.event("e", {"n": 7.0})
    assert talk.status == "completed"


def test_one_event_completes_a_saga_at_most_once() -> None:
    saga = saga_of(waits("first"), waits("second"))
    talk = Conversation(saga)
    talk.start(input=ORDER)
    talk.event("paid", {"order_id": "o-1"}, message_id="m")
    assert talk.step("first") == "succeeded" and talk.step("second") == "waiting"
    for _ in range(3):
        talk.event("paid", {"order_id": "o-1"}, message_id="m")  # redelivered
    assert talk.step("second") == "waiting"
    assert talk.state.history[-1].detail["repeats"] == 3
    talk.event("paid", {"order_id": "o-1"}, message_id="m2")
    assert talk.status == "completed"


def test_an_event_after_the_step_ended_is_recorded_only() -> None:
    talk = _waiting()
    talk.event("paid", {"order_id": "o-1"}, message_id="m1")
    talk.event("paid", {"order_id": "o-1"}, message_id="m2")
    assert talk.state.history[-1].event == "event.ignored"


def test_the_await_timeout_fails_the_step_and_compensates_without_retry() -> None:
    talk = _waiting(timeout="5m")
    assert talk.fire() == [("compensation", "reserve", 1)]
    assert talk.step("paid") == "failed"
    error = talk.state.step("paid").action.error
    assert error is not None and error.code == "await_timeout"
    assert talk.state.awaiting == []


def test_defaults_timeout_does_not_apply_to_an_await_step() -> None:
    talk = _waiting()
    assert talk.state.step("paid").action.deadline is None
    assert talk.state.wake_at == talk.state.deadline  # only the saga's deadline


def test_a_cancelled_waiting_step_is_aborted_and_not_compensated() -> None:
    talk = _waiting(compensation={"participant": "pay", "command": "void"})
    assert talk.cancel().refused is None
    assert talk.step("paid") == "aborted"
    assert talk.step("reserve") == "compensating"
    assert talk.state.awaiting == []


def test_a_succeeded_await_step_is_compensated_by_its_participant() -> None:
    talk = _waiting(compensation={"participant": "pay", "command": "void"})
    talk.event("paid", {"order_id": "o-1"})
    talk.fail("ship")
    assert talk.last is not None
    assert [c.routing_key for c in talk.last.commands] == ["pay.void"]


def test_a_saga_stored_by_the_previous_version_still_loads() -> None:
    talk = Conversation(saga_of(command("a"), command("b")))
    talk.start()
    old = talk.state.to_document()
    old["schema_version"] = 1
    for field in ("awaiting", "conditions"):
        del old[field]
    for step in old["steps"]:
        del step["unknown"], step["event_id"]
        del step["action"]["retries"], step["compensation"]["retries"]
    state = SagaState.from_document(old)
    assert state.awaiting == [] and state.steps[0].action.retries == 0
    talk._state = state
    assert talk.succeed("a") == [("action", "b", 1)]


# -- conditions --------------------------------------------------------------------------


def test_a_false_condition_skips_the_step_and_it_is_never_compensated() -> None:
    saga = saga_of(
        command("a"),
        command("review", when="input.total >= 1000 && !has(input.trusted)"),
        command("b", input={"r": "${steps.review.output.id}"}),
    )
    talk = Conversation(saga)
    talk.start(input={"total": 5, "order_id": "o"})
    assert talk.succeed("a") == [("action", "b", 1)]
    assert talk.step("review") == "skipped"
    assert talk.state.conditions == {"review": False}
    assert talk.last is not None and talk.last.commands[0].body == {"r": None}
    assert talk.fail("b") == [("compensation", "a", 1)]


def test_a_true_condition_runs_the_step() -> None:
    saga = saga_of(command("review", when="input.total >= 1000"))
    talk = Conversation(saga)
    assert talk.start(input=ORDER) == [("action", "review", 1)]
    assert talk.state.conditions == {"review": True}


def test_a_condition_reads_earlier_steps_outputs_and_statuses() -> None:
    saga = saga_of(
        command("a"),
        command("b", when='steps["a"].status == "succeeded" && steps["a"].output.n > 1'),
    )
    talk = Conversation(saga)
    talk.start()
    assert talk.succeed("a", {"n": 2}) == [("action", "b", 1)]


def test_a_condition_that_fails_to_evaluate_fails_the_step_not_retried() -> None:
    saga = saga_of(command("a"), command("b", when="input.missing > 1"))
    talk = Conversation(saga)
    talk.start(input={})
    assert talk.succeed("a") == [("compensation", "a", 1)]
    error = talk.state.step("b").action.error
    assert error is not None and error.code == "condition_error" and not error.retryable
    assert talk.step("b") == "failed"


def test_a_false_condition_on_a_group_skips_all_its_steps() -> None:
    saga = saga_of(
        group("g", when="input.total > 10", x=[command("x")], y=[command("y")]),
        command("after"),
    )
    talk = Conversation(saga)
    assert talk.start(input={"total": 1}) == [("action", "after", 1)]
    assert talk.step("x") == talk.step("y") == "skipped"
    assert talk.state.conditions == {"g": False}


def test_a_comprehension_over_a_huge_list_is_a_condition_error_not_a_hang() -> None:
    saga = saga_of(command("a", when="input.items.all(i, i in input.items)"))
    talk = Conversation(saga)
    talk.start(input={"items": list(range(100_000))})
    error = talk.state.step("a").action.error
    assert error is not None and error.code == "condition_error" and "100000 items" in error.message
    small = Conversation(saga)
    assert small.start(input={"items": list(range(10))}) == [("action", "a", 1)]
