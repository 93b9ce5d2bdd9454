"""The timeline's layout from histories the engine really writes."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

from coordinator.console.timeline import Bar, branches_of, build_timeline, format_seconds
from coordinator.engine.state import SagaState, StepState
from tests.unit.engine.conversation import Conversation, linear


def bars(state: SagaState, kind: str | None = None) -> list[Bar]:
    found = build_timeline(state, state.updated_at).bars
    return [bar for bar in found if kind is None or bar.kind == kind]


def test_a_retried_then_failed_step_and_its_compensation() -> None:
    talk = Conversation(linear("reserve", "charge", retry={"max_attempts": 2, "backoff": "1s"}))
    talk.start()
    talk.advance(1)
    talk.succeed("reserve")
    talk.advance(2)
    talk.fail("charge", "busy", retryable=True)
    talk.fire()  # the backoff ends: attempt 2
    talk.advance(1)
    talk.fail("charge", "declined")
    talk.advance(1)
    talk.succeed("reserve", kind="compensation")
    state = talk.state
    assert state.status == "compensated"

    actions = [(b.label, b.outcome) for b in bars(state, "action")]
    assert actions == [("#1", "succeeded"), ("#1", "failed"), ("#2", "failed")]
    assert [b.title.split(":")[0] for b in bars(state, "backoff")] == ["charge"]
    (undo,) = bars(state, "compensation")
    assert (undo.label, undo.outcome) == ("undo #1", "succeeded")
    assert undo.title.startswith("reserve compensation #1: succeeded")
    # One axis: each bar starts where the one before it (in time) ended.
    charge1, charge2 = bars(state, "action")[1:]
    assert charge1.x + charge1.width <= charge2.x
    assert charge2.x + charge2.width <= undo.x + 0.01
    timeline = build_timeline(state, state.updated_at)
    assert [lane.label for lane in timeline.lanes] == ["reserve", "charge"]
    assert [m.label for m in timeline.markers] == ["compensating"]
    assert timeline.ticks[0].label == "0s" and len(timeline.ticks) >= 3


def test_a_timed_out_attempt_and_one_in_flight() -> None:
    talk = Conversation(linear("book", retry={"max_attempts": 2, "backoff": "1s"}, timeout="5s"))
    talk.start()
    talk.fire()  # attempt 1 times out
    talk.fire()  # the backoff ends: attempt 2 is sent and stays in flight
    state = talk.state
    later = state.updated_at + timedelta(seconds=3)
    outcomes = [b.outcome for b in build_timeline(state, later).bars if b.kind == "action"]
    assert outcomes == ["timed_out", "in_flight"]
    in_flight = build_timeline(state, later).bars[-1]
    assert in_flight.x + in_flight.width > build_timeline(state, later).plot_right * 0.9


def test_a_cancel_is_marked_and_the_aborted_step_shown() -> None:
    talk = Conversation(linear("reserve", "charge"))
    talk.start()
    talk.succeed("reserve")
    talk.advance(1)
    talk.cancel("customer called")
    timeline = build_timeline(talk.state, talk.state.updated_at)
    assert [m.label for m in timeline.markers][:1] == ["cancelled"]
    assert "customer called" in timeline.markers[0].title
    charge = [(b.kind, b.outcome) for b in timeline.bars if b.title.startswith("charge")]
    # Its outcome is unknown, so it is compensated too: that compensation is in flight.
    assert charge == [("action", "aborted"), ("compensation", "in_flight")]


class BranchStep(StepState):
    """A step as the engine will store it inside a parallel group."""

    model_config = {"extra": "allow"}


def test_lanes_come_from_group_and_branch_when_the_steps_carry_them() -> None:
    talk = Conversation(linear("a", "b", "c"))
    talk.start()
    state = talk.state
    steps = [
        BranchStep(**state.steps[0].model_dump()),
        BranchStep(**state.steps[1].model_dump(), group="travel", branch="flight"),
        BranchStep(**state.steps[2].model_dump(), group="travel", branch="flight"),
    ]
    lanes = build_timeline(state.model_copy(update={"steps": steps}), state.updated_at).lanes
    assert [(lane.label, [name for name, _ in lane.statuses]) for lane in lanes] == [
        ("a", ["a"]),
        ("travel: flight", ["b", "c"]),
    ]


def test_lanes_come_from_the_definitions_groups_when_the_steps_do_not_say() -> None:
    talk = Conversation(linear("a", "b", "c", "d"))
    talk.start()
    flight, hotel = SimpleNamespace(name="b"), SimpleNamespace(name="c")
    group = SimpleNamespace(name="travel", parallel={"flight": [flight], "hotel": [hotel]})
    laid_out = SimpleNamespace(steps=[SimpleNamespace(name="a"), group, SimpleNamespace(name="d")])
    branches = branches_of(laid_out)
    assert branches == {"b": ("travel", "flight"), "c": ("travel", "hotel")}
    lanes = build_timeline(talk.state, talk.state.updated_at, branches).lanes
    assert [lane.label for lane in lanes] == ["a", "travel: flight", "travel: hotel", "d"]


def test_a_waiting_step_without_an_attempt_is_drawn_waiting() -> None:
    talk = Conversation(linear("approve"))
    talk.start()
    state = talk.state
    waiting = state.steps[0].model_copy(update={"status": "waiting"})
    state = state.model_copy(update={"steps": [waiting], "history": state.history[:1]})
    drawn = build_timeline(state, state.updated_at + timedelta(seconds=30)).bars
    assert [(b.kind, b.outcome) for b in drawn] == [("waiting", "waiting")]


def test_durations_read_short() -> None:
    assert [format_seconds(s) for s in (0, 0.25, 4, 42, 125, 3600, 4200)] == [
        "0s", "0.25s", "4s", "42s", "2m05s", "1h", "1h10m",
    ]  # fmt: skip
