"""Rules for one step's phases: sending attempts, failing them, aborting, compensating.

Part of the state machine (see the table in ``transitions.py``). Which steps are
compensated, and in which order (SPEC §4 rules 4 and 8):

- compensable: a step that succeeded, or whose outcome is unknown (``timed_out``, or
  ``aborted`` while its command was in flight), and that has a compensation. Skipped steps,
  steps failed by an explicit failure reply, and await steps that received no event never
  are;
- order: top-level items from last to first; a parallel group's branches are compensated
  at the same time, each from its last step to its first; the steps before the group wait
  until every branch is done, and are compensated one at a time;
- a compensation exhausted: its branch stops; the saga becomes ``failed`` once no other
  compensation is in flight.
"""

from __future__ import annotations

from datetime import datetime

from schemas.envelope import Kind

from .backoff import backoff_delay
from .commands import attempt_timeout, build_command
from .run import Run, error_detail, utc
from .state import ErrorInfo, StepState

__all__ = [
    "ATTEMPT_TIMEOUT",
    "abort_leaf",
    "attempt_failed",
    "compensable",
    "compensate",
    "fail",
    "give_up",
    "next_compensations",
    "send",
    "stop_waiting",
]

ATTEMPT_TIMEOUT = "attempt_timeout"
"""Error code of an attempt that got no reply before its deadline."""


def _command_deadline(run: Run, index: int, kind: Kind) -> datetime:
    """``x-deadline``: the attempt's deadline, or the saga's if that comes first."""
    deadline = run.at + attempt_timeout(run.definition, index, kind)
    saga = run.state.deadline
    if kind == "action" and saga is not None and run.passed_pivot() is None:
        deadline = min(deadline, utc(saga))
    return deadline


def send(run: Run, index: int, kind: Kind) -> None:
    """Send the next attempt of a phase, or fail it at once if its input cannot resolve."""
    step, phase = run.step(index), run.phase(index, kind)
    attempt = phase.attempt + 1
    step.status = "running" if kind == "action" else "compensating"
    phase.retry_at = None
    phase.finished_at = None
    if phase.started_at is None:
        phase.started_at = run.at
    built = build_command(
        run.definition,
        run.state,
        index,
        kind,
        attempt,
        at=run.at,
        reply_to=run.reply_to,
        deadline=_command_deadline(run, index, kind),
        retry=phase.retries,
    )
    if isinstance(built, ErrorInfo):
        phase.error = built
        run.record(
            f"{kind}.unsendable", step=step.name, kind=kind, attempt=attempt, **error_detail(built)
        )
        give_up(run, index, kind, built, timed_out=False)
        return
    phase.attempt = attempt
    phase.waiting = True
    phase.deadline = run.at + attempt_timeout(run.definition, index, kind)
    run.emit(built)
    run.record(
        f"{kind}.sent",
        step=step.name,
        kind=kind,
        attempt=attempt,
        message_id=built.message_id,
        deadline=phase.deadline,
    )


def attempt_failed(run: Run, index: int, kind: Kind, error: ErrorInfo, *, timed_out: bool) -> None:
    """A failure reply or an attempt timeout: retry after a backoff, or give up."""
    step, phase = run.step(index), run.phase(index, kind)
    phase.waiting, phase.deadline, phase.error = False, None, error
    event = f"{kind}.timed_out" if timed_out else f"{kind}.failed"
    run.record(event, step=step.name, kind=kind, attempt=phase.attempt, **error_detail(error))
    policy = run.policy(index, kind)
    used = phase.attempt - phase.budget_start + 1
    if (timed_out or error.retryable) and used < policy.max_attempts:
        delay = backoff_delay(policy, used, run.draw)
        phase.retry_at = run.at + delay
        run.record(
            f"{kind}.retry_scheduled",
            step=step.name,
            kind=kind,
            attempt=phase.attempt + 1,
            retry_at=phase.retry_at,
            delay_ms=round(delay.total_seconds() * 1000),
        )
        return
    give_up(run, index, kind, error, timed_out=timed_out)


def give_up(run: Run, index: int, kind: Kind, error: ErrorInfo, *, timed_out: bool) -> None:
    """A phase failed for good: compensate, or fail the saga for an operator."""
    step, phase = run.step(index), run.phase(index, kind)
    phase.waiting, phase.deadline, phase.retry_at, phase.finished_at = False, None, None, run.at
    if kind == "compensation":
        step.status = "compensation_failed"
        run.record("step.compensation_failed", step=step.name, kind=kind, attempt=phase.attempt)
        next_compensations(run)
        return
    stop_waiting(run, index)
    step.status = "timed_out" if timed_out else "failed"
    step.unknown = timed_out
    run.record(f"step.{step.status}", step=step.name, kind=kind, attempt=phase.attempt)
    leaf = run.leaf(index)
    if leaf.group is not None:
        run.record("group.failed", step=leaf.group, branch=leaf.branch)
        for other in run.item_indexes(leaf.top):
            abort_leaf(run, other, error)
    if run.passed_pivot() is not None:
        fail(run, error, step.name)
    else:
        compensate(run, error)


def fail(run: Run, error: ErrorInfo, step: str) -> None:
    """The saga stops for an operator; its ``reason`` keeps the first cause."""
    run.state.status = "failed"
    run.state.reason = run.state.reason or error
    run.record("saga.failed", step=step, **error_detail(error))


def stop_waiting(run: Run, index: int) -> None:
    """Drop a step's entry from ``awaiting`` (it no longer waits for an event)."""
    name = run.step(index).name
    if any(entry.step == name for entry in run.state.awaiting):
        run.state.awaiting = [entry for entry in run.state.awaiting if entry.step != name]


def abort_leaf(run: Run, index: int, reason: ErrorInfo) -> None:
    """Cut a running or waiting step short: ``aborted``; compensable if its outcome is unknown.

    A command in flight, or whose last attempt timed out, may have been performed; a step
    waiting for a retry after an explicit failure was not; a waiting await step received
    no event.
    """
    step = run.step(index)
    if step.status not in ("running", "waiting"):
        return
    phase = step.action
    timed_out = phase.error is not None and phase.error.code == ATTEMPT_TIMEOUT
    unknown = step.status == "running" and (phase.waiting or timed_out)
    phase.waiting, phase.deadline, phase.retry_at, phase.finished_at = False, None, None, run.at
    stop_waiting(run, index)
    step.status, step.unknown, phase.error = "aborted", unknown, reason
    run.record(
        "step.aborted",
        step=step.name,
        kind="action",
        attempt=phase.attempt,
        outcome="unknown" if unknown else "not performed",
    )


def _may_have_acted(step: StepState) -> bool:
    """Whether the step's action may have done something: succeeded, or outcome unknown."""
    return step.status in ("succeeded", "timed_out") or (step.status == "aborted" and step.unknown)


def compensable(run: Run, index: int) -> bool:
    """Whether the step's action may have done something to undo, and it has an undo."""
    return _may_have_acted(run.step(index)) and run.step_def(index).compensation is not None


def compensate(run: Run, reason: ErrorInfo) -> None:
    """Start compensating: the reason is kept if the saga already had one."""
    run.state.status = "compensating"
    run.state.reason = run.state.reason or reason
    run.record("saga.compensating", **error_detail(reason))
    for index in reversed(range(len(run.state.steps))):
        step = run.step(index)
        if _may_have_acted(step) and run.step_def(index).compensation is None:
            run.record("compensation.skipped", step=step.name, why="the step has no compensation")
    next_compensations(run)


def next_compensations(run: Run) -> None:
    """Send the compensations whose turn has come; settle the saga when none is left.

    Re-entrant calls (a compensation that cannot even be sent fails at once) return at
    once: the loop here picks up what they changed.
    """
    if run.settling:
        return
    run.settling = True
    try:
        while _send_due(run):
            pass
    finally:
        run.settling = False
    statuses = [step.status for step in run.state.steps]
    if "compensating" in statuses:
        return
    if "compensation_failed" in statuses:
        failed = next(s for s in run.state.steps if s.status == "compensation_failed")
        fail(run, failed.compensation.error or ErrorInfo(code="compensation_failed"), failed.name)
        return
    run.state.status = "compensated"
    run.record("saga.compensated")


def _send_due(run: Run) -> bool:
    """Send the compensations due now; True if one was sent (the picture changed)."""
    for item in reversed(run.definition.branches):
        busy = False
        for branch in item:
            indexes = [leaf.index for leaf in branch]
            statuses = [run.step(i).status for i in indexes]
            if "compensating" in statuses or "compensation_failed" in statuses:
                busy = True
                continue
            due = [i for i in reversed(indexes) if compensable(run, i)]
            if due:
                send(run, due[0], "compensation")
                return True
        if busy:
            return False
    return False
