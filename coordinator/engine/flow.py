"""Rules of the way forward: conditions, parallel groups, await steps, completion.

Part of the state machine (see the table in ``transitions.py``). After a step ends well
(``succeeded`` or ``skipped``), ``after_leaf`` starts what comes next: the next step of its
branch, or, once every branch of its group has ended, the item after the group; after the
last item the saga is ``completed``. Starting an item evaluates its ``when`` first.
"""

from __future__ import annotations

from typing import Any

from schemas.conditions import ConditionError, evaluate
from schemas.definition import AwaitStep, Group
from schemas.references import ReferenceMissing, ReferenceSyntaxError, resolve

from .commands import resolution_context, skipped_steps
from .run import Run
from .state import Awaiting, ErrorInfo
from .steps import compensate, give_up, send, stop_waiting

__all__ = [
    "AWAIT_TIMEOUT",
    "CONDITION_ERROR",
    "after_leaf",
    "await_timed_out",
    "begin_wait",
    "match_value",
    "same_value",
    "start_item",
]

CONDITION_ERROR = "condition_error"
AWAIT_TIMEOUT = "await_timeout"


def _condition(run: Run, name: str, expression: str | None) -> bool | ErrorInfo:
    """The outcome of a ``when`` (True without one), recorded in ``state.conditions``."""
    if expression is None:
        return True
    activation = {
        "input": run.state.input,
        "saga": {"id": run.state.id, "key": run.state.key},
        "steps": {s.name: {"output": s.output, "status": s.status} for s in run.state.steps},
    }
    try:
        outcome = evaluate(run.definition.conditions[name], activation)
    except ConditionError as exc:
        return ErrorInfo(code=CONDITION_ERROR, message=f"{name}: when: {exc}")
    run.state.conditions = {**run.state.conditions, name: outcome}
    return outcome


def start_item(run: Run, top: int) -> None:
    """Start the top-level item ``top`` (a step or a group), or complete the saga."""
    if run.state.status != "running":
        return
    if top >= len(run.definition.steps):
        run.state.status, run.state.reason = "completed", None
        run.record("saga.completed")
        return
    item = run.definition.steps[top]
    branches = run.definition.branches[top]
    if not isinstance(item, Group):
        start_leaf(run, branches[0][0].index)
        return
    outcome = _condition(run, item.name, item.when)
    if isinstance(outcome, ErrorInfo):
        run.record("group.condition_error", step=item.name, error=outcome.model_dump())
        compensate(run, outcome)
        return
    if not outcome:
        for index in run.item_indexes(top):
            run.step(index).status = "skipped"
        run.record("group.skipped", step=item.name)
        start_item(run, top + 1)
        return
    run.record("group.started", step=item.name, branches=list(item.parallel))
    for branch in branches:
        if run.state.status != "running":
            return
        start_leaf(run, branch[0].index)


def start_leaf(run: Run, index: int) -> None:
    """Start a command or await step under its condition."""
    step_def = run.step_def(index)
    outcome = _condition(run, step_def.name, step_def.when)
    if isinstance(outcome, ErrorInfo):
        run.phase(index, "action").error = outcome
        give_up(run, index, "action", outcome, timed_out=False)
        return
    if not outcome:
        run.step(index).status = "skipped"
        run.record("step.skipped", step=step_def.name)
        after_leaf(run, index)
        return
    if isinstance(step_def, AwaitStep):
        begin_wait(run, index)
    else:
        send(run, index, "action")


def after_leaf(run: Run, index: int) -> None:
    """A step succeeded or was skipped: start what comes after it."""
    if run.state.status != "running":
        return
    leaf = run.leaf(index)
    if leaf.group is None:
        start_item(run, leaf.top + 1)
        return
    leaves = run.definition.leaves
    if index + 1 < len(leaves) and (leaves[index + 1].group, leaves[index + 1].branch) == (
        leaf.group,
        leaf.branch,
    ):
        start_leaf(run, index + 1)
        return
    if all(run.step(i).status in ("succeeded", "skipped") for i in run.item_indexes(leaf.top)):
        run.record("group.succeeded", step=leaf.group)
        start_item(run, leaf.top + 1)


def begin_wait(run: Run, index: int) -> None:
    """An await step starts waiting: resolve this saga's value, note what it waits for."""
    step_def, step, phase = run.step_def(index), run.step(index), run.phase(index, "action")
    assert isinstance(step_def, AwaitStep)
    spec = step_def.awaits
    try:
        value = resolve(
            spec.equals, resolution_context(run.state), unknown_steps=skipped_steps(run.state)
        )
    except (ReferenceMissing, ReferenceSyntaxError) as exc:
        error = ErrorInfo(code="reference_missing", message=f"{step.name}: await.equals: {exc}")
        phase.error = error
        give_up(run, index, "action", error, timed_out=False)
        return
    if not _correlates(value):
        error = ErrorInfo(
            code="invalid_input",
            message=(
                f"{step.name}: await.equals resolved to {type(value).__name__}; it must be "
                "a string or a number"
            ),
        )
        phase.error = error
        give_up(run, index, "action", error, timed_out=False)
        return
    step.status = "waiting"
    phase.attempt += 1
    phase.waiting, phase.retry_at, phase.finished_at, phase.error = True, None, None, None
    phase.started_at = phase.started_at or run.at
    phase.deadline = run.at + step_def.timeout if step_def.timeout is not None else None
    entry = Awaiting(step=step.name, event=spec.event, value=value, since=run.at)
    run.state.awaiting = [*run.state.awaiting, entry]
    run.awaits.append(step.name)
    run.record(
        "await.waiting",
        step=step.name,
        event_type=spec.event,
        value=value,
        deadline=phase.deadline,
    )


def await_timed_out(run: Run, index: int) -> None:
    """The await step's timeout passed without its event: it fails, not retried."""
    step_def = run.step_def(index)
    assert step_def.timeout is not None
    error = ErrorInfo(
        code=AWAIT_TIMEOUT,
        message=f"no matching event within {step_def.timeout.total_seconds():g}s",
    )
    run.phase(index, "action").error = error
    stop_waiting(run, index)
    give_up(run, index, "action", error, timed_out=False)


def _correlates(value: Any) -> bool:
    """Whether ``value`` can correlate an event to a saga: a string or a number."""
    return not isinstance(value, bool) and isinstance(value, str | int | float)


def match_value(step: AwaitStep, body: dict[str, Any]) -> str | int | float | None:
    """The value an event of ``step``'s type is correlated by: ``await.match`` resolved
    against its body; None when it has none, or one that is not a string or a number.

    The runtime finds the sagas an event may complete with it:
    ``awaiting: {$elemMatch: {event: <event type>, value: <this value>}}``.
    """
    try:
        value = resolve(step.awaits.match, {"event": body})
    except (ReferenceMissing, ReferenceSyntaxError):
        return None
    return value if _correlates(value) else None


def same_value(left: Any, right: Any) -> bool:
    """Equal as JSON strings or numbers (1 == 1.0; "1" != 1; booleans never match)."""
    if isinstance(left, bool) or isinstance(right, bool):
        return False
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    numbers = (int, float)
    return isinstance(left, numbers) and isinstance(right, numbers) and left == right
