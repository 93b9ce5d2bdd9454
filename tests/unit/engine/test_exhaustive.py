"""An exhaustive check of the engine on small definitions.

From the start of a saga, every input that could come next is tried — a success or a
failure reply for every command sent so far (late and duplicate ones included), the next
timer, a cancel, an operator retry, a matching, a repeated and a foreign event — up to a
bounded depth, breadth first, each state visited once (states are compared without their
history). Every state is stored and read back as MongoDB would (``to_document``, naive UTC
datetimes, ``from_document``) before it goes on: a coordinator restart between any two
inputs. On every transition the invariants of SPEC §4 are asserted (see ``_check``).

The depth is ``SAGA_EXHAUSTIVE_DEPTH`` (default: a quick one for CI); the number of states
explored is printed (``pytest -s``) and reported in the test's output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from coordinator.engine import (
    CancelRequested,
    EventReceived,
    Input,
    ReplyReceived,
    RetryRequested,
    SagaStarted,
    SagaState,
    TimerFired,
    Transition,
    handle,
    start,
)
from schemas.definition import SagaDefinition
from schemas.envelope import FailedReply, ReplyError, SucceededReply

from .conversation import T0, command, group, saga_of, waits

DEPTH = int(os.environ.get("SAGA_EXHAUSTIVE_DEPTH", "7"))
ONE_TRY = {"max_attempts": 1}

GROUPED = saga_of(
    command("a", retry=ONE_TRY),
    group(
        "g",
        x=[command("x1", retry={"max_attempts": 2, "backoff": "1s"}), command("x2", retry=ONE_TRY)],
        y=[command("y1", retry=ONE_TRY), command("y2", retry=ONE_TRY)],
    ),
    command("p", pivot=True, undo=False, retry=ONE_TRY),
    timeout="1h",
)
AWAITING = saga_of(
    command("a", retry=ONE_TRY),
    waits("w", timeout="10m", compensation={"participant": "pay", "command": "void"}),
    command("c", when="input.flag == true", retry=ONE_TRY),
    command("p", pivot=True, undo=False, retry=ONE_TRY),
    command("z", undo=False, retry=ONE_TRY),
    timeout="1h",
)
SUCCESS = SucceededReply(status="succeeded", output={"id": 1})
FAILURE = FailedReply(status="failed", error=ReplyError(code="no", retryable=False))
EVENTS = [
    ("paid", {"order_id": "o-1"}, "e1"),
    ("paid", {"order_id": "o-1"}, "e2"),
    ("paid", {"order_id": "other"}, "e3"),
]


def _stored(state: SagaState) -> SagaState:
    """The state as MongoDB gives it back: datetimes naive UTC, millisecond precision."""

    def naive(value: Any) -> Any:
        if isinstance(value, datetime):
            value = value.astimezone(UTC).replace(tzinfo=None)
            return value.replace(microsecond=value.microsecond // 1000 * 1000)
        if isinstance(value, dict):
            return {key: naive(item) for key, item in value.items()}
        if isinstance(value, list):
            return [naive(item) for item in value]
        return value

    return SagaState.from_document(naive(state.to_document()))


def _aware(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, dict):
        return {key: _aware(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_aware(item) for item in value]
    return value


def _key(state: SagaState) -> str:
    """What decides a state's future: everything but its history and revision."""
    data = _aware(state.model_dump(exclude={"history", "history_dropped", "revision", "outbox"}))
    data["outbox"] = sorted(
        (str(c.headers["x-saga-step"]), str(c.headers["x-saga-kind"]), c.headers["x-saga-attempt"])
        for c in state.outbox
    )
    return json.dumps(data, sort_keys=True, default=str)


def _now(state: SagaState) -> datetime:
    return _aware(state.updated_at)  # type: ignore[no-any-return]


def _moves(state: SagaState) -> Iterator[Input]:
    now = _now(state)
    sent = {
        (
            str(c.headers["x-saga-step"]),
            str(c.headers["x-saga-kind"]),
            int(c.headers["x-saga-attempt"]),
        )
        for c in state.outbox
    }
    for step, kind, attempt in sorted(sent):
        for reply in (SUCCESS, FAILURE):
            yield ReplyReceived(
                step=step,
                kind="action" if kind == "action" else "compensation",
                attempt=attempt,
                reply=reply,
                at=now,
                message_id=f"{step}:{kind}:{attempt}:{reply.status}",
            )
    if state.wake_at is not None:
        yield TimerFired(at=max(now, _aware(state.wake_at)))
    yield CancelRequested(reason="stop", at=now)
    if state.status == "failed":
        yield RetryRequested(at=now)
    if any(step.status == "waiting" for step in state.steps):
        for event_type, body, message_id in EVENTS:
            yield EventReceived(event_type=event_type, body=body, at=now, message_id=message_id)


def _leaf_of(definition: SagaDefinition, name: str) -> Any:
    return next(leaf for leaf in definition.leaves if leaf.step.name == name)


def _check(
    definition: SagaDefinition, before: SagaState, message: Input, after: Transition
) -> None:
    state = after.state
    statuses_before = {step.name: step.status for step in before.steps}
    if before.status in ("completed", "compensated"):
        assert not after.commands and state.status == before.status, "a terminal state moved"
        assert [s.model_dump() for s in state.steps] == [s.model_dump() for s in before.steps]
    pivot_passed = any(
        leaf.step.pivot and statuses_before[leaf.step.name] == "succeeded"
        for leaf in definition.leaves
    )
    for sent in after.commands:
        name, kind = str(sent.headers["x-saga-step"]), sent.headers["x-saga-kind"]
        leaf = _leaf_of(definition, name)
        assert statuses_before[name] != "skipped", "a skipped step was sent a command"
        if kind == "compensation":
            assert not pivot_passed, "a step before a succeeded pivot was compensated"
            later = [other for other in definition.leaves if other.top > leaf.top]
            for other in later:
                assert state.step(other.step.name).status not in ("compensating",) or (
                    other.step.compensation is None
                ), f"{name} compensated while {other.step.name}, later, still is"
        elif leaf.group is not None and not isinstance(message, RetryRequested):
            siblings = [o.step.name for o in definition.leaves if o.group == leaf.group]
            stopped = {"failed", "timed_out", "aborted", "compensating", "compensated"}
            assert not any(statuses_before[s] in stopped for s in siblings), (
                f"{name} started after its group failed"
            )
    _check_ends(definition, before, state)


def _check_ends(definition: SagaDefinition, before: SagaState, state: SagaState) -> None:
    """Aborts mark the outcome right; a compensated saga undid each step exactly once."""
    for old, new in zip(before.steps, state.steps, strict=True):
        if new.status == "aborted" and old.status == "running" and old.action.waiting:
            assert new.unknown, f"{new.name} was aborted in flight but will not be compensated"
        if new.status == "aborted" and old.status == "waiting":
            assert not new.unknown, f"{new.name} received no event but will be compensated"
    if state.status == "compensated":
        for leaf in definition.leaves:
            step = state.step(leaf.step.name)
            if leaf.step.compensation is None:
                continue
            assert step.status not in ("succeeded", "timed_out", "compensating"), step.name
            assert not (step.status == "aborted" and step.unknown), step.name
            undone = [
                e
                for e in state.history
                if e.event == "compensation.succeeded" and e.step == leaf.step.name
            ]
            assert len(undone) == (1 if step.status == "compensated" else 0), step.name
    for step in state.steps:
        if step.status == "skipped":
            assert step.compensation.attempt == 0, "a skipped step was compensated"
    if state.status in ("running", "compensating"):
        waiting = any(step.status == "waiting" for step in state.steps)
        assert state.wake_at is not None or waiting, "an active saga with no timer"


def _restart(definition: SagaDefinition, state: SagaState) -> SagaState:
    """The state after a restart: read back from its stored form, it is the same state."""
    restored = _stored(state)
    assert _key(restored) == _key(state), "a restart changed the state"
    assert _aware(restored.model_dump()) == _aware(_stored(restored).model_dump())
    again = handle(definition, restored, TimerFired(at=_now(restored)), random=lambda: 0.5)
    original = handle(definition, state, TimerFired(at=_now(state)), random=lambda: 0.5)
    assert again.changed == original.changed and _key(again.state) == _key(original.state)
    return restored


def _explore(definition: SagaDefinition, saga_input: dict[str, Any], depth: int) -> int:
    first = start(
        definition,
        SagaStarted(saga_id="s", key="k", input=saga_input, at=T0),
        random=lambda: 0.5,
    )
    frontier = [_restart(definition, first.state)]
    seen = {_key(frontier[0])}
    for _ in range(depth):
        following: list[SagaState] = []
        for state in frontier:
            for message in _moves(state):
                transition = handle(definition, state, message, random=lambda: 0.5)
                _check(definition, state, message, transition)
                key = _key(transition.state)
                if key not in seen:
                    seen.add(key)
                    following.append(_restart(definition, transition.state))
        frontier = following
    return len(seen)


@pytest.mark.parametrize(
    ("name", "definition", "saga_input"),
    [
        ("group of two branches of two steps, then a pivot", GROUPED, {"order_id": "o-1"}),
        ("await, when (true), pivot", AWAITING, {"order_id": "o-1", "flag": True}),
        ("await, when (false), pivot", AWAITING, {"order_id": "o-1", "flag": False}),
    ],
)
def test_every_interleaving_keeps_the_invariants(
    name: str,
    definition: SagaDefinition,
    saga_input: dict[str, Any],
    record_property: Any,
) -> None:
    explored = _explore(definition, saga_input, DEPTH)
    print(f"\nexhaustive check, {name}: {explored} states explored at depth {DEPTH}")
    record_property("states_explored", explored)
    assert explored > DEPTH, f"only {explored} states explored: the exploration is broken"
