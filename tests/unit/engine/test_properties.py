"""Property tests: random definitions fed random, stale, duplicate and reordered inputs.

Every run checks, on every transition, the invariants a participant and an operator rely
on (see ``Checker``); ``Conversation.feed`` adds the per-transition ones (input state not
mutated, revision + 1 per changed transition). A second phase then answers every command
until nothing is outstanding and checks that the saga ends completed, compensated or
failed.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from coordinator.engine import Command, ReplyReceived, Transition
from schemas.definition import SagaDefinition
from schemas.envelope import FailedReply, ReplyError, SucceededReply

from .conversation import Conversation

HEADERS = {
    "x-saga-id",
    "x-saga-name",
    "x-saga-version",
    "x-saga-step",
    "x-saga-kind",
    "x-saga-attempt",
    "x-idempotency-key",
    "x-deadline",
}
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def definitions(draw: st.DrawFn) -> SagaDefinition:
    count = draw(st.integers(1, 5))
    pivot = draw(st.one_of(st.none(), st.integers(0, count - 1)))
    steps: list[dict[str, Any]] = []
    for index in range(count):
        name = f"s{index}"
        step: dict[str, Any] = {
            "name": name,
            "participant": f"p{index}",
            "command": "do",
            "timeout": draw(st.sampled_from(["1s", "5s", "30s"])),
            "retry": {
                "max_attempts": draw(st.integers(1, 3)),
                "backoff": draw(st.sampled_from(["0s", "1s", "3s"])),
                "max_backoff": "10s",
            },
            "input": draw(st.sampled_from([{}, {"x": "${input.x}"}, {"n": "${input.maybe}"}])),
        }
        if pivot is not None and index == pivot:
            step["pivot"] = True
        after_pivot = pivot is not None and index > pivot
        if not after_pivot and draw(st.integers(0, 3)) > 0:
            step["compensation"] = {
                "command": "undo",
                "input": draw(st.sampled_from([{}, {"id": f"${{steps.{name}.output.id}}"}])),
                "timeout": draw(st.sampled_from(["1s", "10s"])),
                "retry": {"max_attempts": draw(st.integers(1, 3)), "backoff": "1s"},
            }
        steps.append(step)
    # Sometimes the steps before the pivot (or all, without one) become a parallel group
    # of two branches, whose steps then run and are compensated side by side.
    end = pivot if pivot is not None else count
    if end >= 2 and draw(st.booleans()):
        cut = draw(st.integers(1, end - 1))
        branches = {"left": steps[:cut], "right": steps[cut:end]}
        steps = [{"name": "g", "parallel": branches}, *steps[end:]]
    timeout = draw(st.sampled_from([None, "5s", "1m"]))
    data: dict[str, Any] = {"name": "prop", "version": 1, "steps": steps}
    if timeout is not None:
        data["timeout"] = timeout
    return SagaDefinition.model_validate(data)


REPLIES = st.sampled_from(
    ["succeeded", "succeeded-id", "succeeded-id", "succeeded-id", "failed", "retryable"]
)
OPS = st.one_of(
    st.tuples(st.just("reply"), st.integers(0, 10**6), REPLIES, st.sampled_from([0, 0, 0, -1, 1])),
    st.tuples(st.just("timer"), st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0, 40.0])),
    st.tuples(st.just("wake")),
    st.tuples(st.just("cancel")),
    st.tuples(st.just("retry")),
    st.tuples(st.just("trigger")),
    st.tuples(st.just("stray"), st.sampled_from(["nope", "s0"]), st.integers(-1, 9)),
)


def body(outcome: str) -> SucceededReply | FailedReply:
    if outcome.startswith("succeeded"):
        return SucceededReply(
            status="succeeded", output={"id": 7} if outcome == "succeeded-id" else {}
        )
    error = ReplyError(code="e", message="", retryable=outcome == "retryable")
    return FailedReply(status="failed", error=error)


class Checker:
    """What must hold over a whole run, fed every transition."""

    def __init__(self, talk: Conversation) -> None:
        self.talk = talk
        self.definition = talk.definition
        self.order = {leaf.step.name: leaf.top for leaf in self.definition.leaves}
        self.emitted: list[Command] = []
        self.seen: set[tuple[str, str, int]] = set()
        self.compensating_seen = False
        self.terminal_seen = False
        self.pivot_passed = False
        self.compensated_order: list[int] = []
        self.retries: dict[tuple[str, str], int] = {}

    def check(self, transition: Transition) -> None:
        for entry in transition.state.history:
            if entry.event == "saga.retried" and entry.step and entry.kind:
                retry = int(entry.detail["retry"])
                key = (entry.step, entry.kind)
                self.retries[key] = max(self.retries.get(key, 0), retry)
        for command in transition.commands:
            headers = command.headers
            assert set(headers) >= HEADERS
            step, kind, attempt = (
                headers["x-saga-step"],
                headers["x-saga-kind"],
                headers["x-saga-attempt"],
            )
            assert isinstance(step, str) and isinstance(attempt, int)
            retried = self.retries.get((str(step), str(kind)), 0)
            base = f"{self.talk.saga_id}:{step}:{kind}"
            assert headers["x-idempotency-key"] == (f"{base}:r{retried}" if retried else base)
            assert command.message_id == f"{self.talk.saga_id}:{step}:{kind}:{attempt}"
            assert (step, kind, attempt) not in self.seen, "a command was emitted twice"
            self.seen.add((str(step), str(kind), attempt))
            assert not self.terminal_seen, "a command after a terminal status"
            if kind == "action":
                assert not self.compensating_seen, "an action after compensation began"
            else:
                assert not self.pivot_passed, "a compensation after the pivot succeeded"
                assert "action" in {k for s, k, _ in self.seen if s == step}, "never sent"
                # last item first; a group's branches are undone side by side
                top = self.order[step]
                assert not self.compensated_order or top <= self.compensated_order[-1]
                self.compensated_order.append(top)
            self.emitted.append(command)
        state = transition.state
        if state.status == "compensating":
            self.compensating_seen = True
        if state.status in ("completed", "compensated"):
            self.terminal_seen = True
        for leaf, step_state in zip(self.definition.leaves, state.steps, strict=True):
            if leaf.step.pivot and step_state.status == "succeeded":
                self.pivot_passed = True
        if state.status in ("running", "compensating"):
            assert state.wake_at is not None, "an active saga with no timer: it could hang"
        else:
            assert state.wake_at is None


def apply_op(talk: Conversation, checker: Checker, op: tuple[Any, ...]) -> None:
    name = op[0]
    if name == "reply":
        if not checker.emitted:
            return
        command = checker.emitted[op[1] % len(checker.emitted)]
        attempt = int(command.headers["x-saga-attempt"]) + op[3]
        message = ReplyReceived(
            step=str(command.headers["x-saga-step"]),
            kind="action" if command.headers["x-saga-kind"] == "action" else "compensation",
            attempt=attempt,
            reply=body(op[2]),
            at=talk.now,
        )
        checker.check(talk.feed(message))
    elif name == "timer":
        talk.advance(op[1])
        checker.check(talk.tick())
    elif name == "wake":
        if talk.state.wake_at is not None:
            talk.fire()
            assert talk.last is not None
            checker.check(talk.last)
    elif name == "cancel":
        checker.check(talk.cancel())
    elif name == "retry":
        checker.check(talk.retry())
    elif name == "trigger":
        checker.check(talk.trigger_repeated())
    else:
        message = ReplyReceived(
            step=op[1], kind="compensation", attempt=op[2], reply=body("succeeded"), at=talk.now
        )
        checker.check(talk.feed(message))


def outstanding(talk: Conversation) -> tuple[str, str, int] | None:
    for step in talk.state.steps:
        if step.action.waiting:
            return step.name, "action", step.action.attempt
        if step.compensation.waiting:
            return step.name, "compensation", step.compensation.attempt
    return None


@SETTINGS
@given(
    saga=definitions(),
    saga_input=st.sampled_from([{"x": 1}, {"x": 1, "maybe": 2}, {"x": 1, "maybe": 2}]),
    ops=st.lists(OPS, max_size=40),
    data=st.data(),
)
def test_random_conversations_keep_the_invariants_and_end(
    saga: SagaDefinition,
    saga_input: dict[str, Any],
    ops: list[tuple[Any, ...]],
    data: st.DataObject,
) -> None:
    randoms = iter(data.draw(st.lists(st.floats(0, 0.999), min_size=1, max_size=5)) * 1000)
    talk = Conversation(saga, random=lambda: next(randoms))
    talk.start(input=saga_input)
    checker = Checker(talk)
    assert talk.last is not None
    checker.check(talk.last)
    for op in ops:
        apply_op(talk, checker, op)

    # Participants now always answer, and timers fire when due: the saga must end.
    operator_retries = data.draw(st.integers(0, 2))
    for _ in range(2000):
        pending = outstanding(talk)
        if pending is not None:
            step, kind, attempt = pending
            outcome = data.draw(REPLIES)
            message = ReplyReceived(
                step=step,
                kind="action" if kind == "action" else "compensation",
                attempt=attempt,
                reply=body(outcome),
                at=talk.now,
            )
            checker.check(talk.feed(message))
        elif talk.state.wake_at is not None:
            talk.fire()
            assert talk.last is not None
            checker.check(talk.last)
        elif talk.status == "failed" and operator_retries > 0:
            operator_retries -= 1
            checker.check(talk.retry())
        else:
            break
    else:
        raise AssertionError("the saga did not end")
    assert talk.status in ("completed", "compensated", "failed")
    event(f"ended {talk.status}")
    event(f"with a group: {len(talk.definition.leaves) != len(talk.definition.steps)}")
    event(f"saw compensation: {checker.compensating_seen}")
    event(f"operator retried: {'saga.retried' in talk.events()}")
    event(f"cancelled: {'saga.cancelled' in talk.events()}")
    event(f"deadline passed: {'saga.deadline_passed' in talk.events()}")
    assert talk.state.wake_at is None and outstanding(talk) is None
    if talk.status == "completed":
        assert {s.status for s in talk.state.steps} == {"succeeded"}
    if talk.status == "compensated":
        assert not {s.status for s in talk.state.steps} & {"running", "compensating"}
