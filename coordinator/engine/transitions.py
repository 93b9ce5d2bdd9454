"""The saga state machine. ALL transition logic lives in this file.

Nothing else decides what happens to a saga: ``engine.py`` checks the call, copies the
state and stamps the result (revision, ``updated_at``, ``wake_at``, history trimming);
``commands.py`` only builds a command; ``backoff.py`` only computes a delay. Every function
here works on a ``Run`` (a private copy of the state plus the input's time) and appends a
history entry for everything it does.

Only one phase is ever active: the action of the running step, or the compensation of the
step being compensated. Attempts only count up; an operator retry moves the phase's
``budget_start`` instead of resetting it, so (step, kind, attempt) names one command.

    (saga status, input)                           → outcome
    ─────────────────────────────────────────────────────────────────────────────────────
    (—, SagaStarted)                               → running; attempt 1 of step 1 sent
    (running, success for the awaited action)      → step succeeded; next step sent, or
                                                     completed after the last one
    (running, retryable failure / TimerFired at    → attempt failed; retry_at = now+backoff
      the attempt deadline)                          while attempts remain, else as below
    (running, non-retryable failure / exhausted)   → step failed (timed_out if the last
                                                     attempt timed out) → compensating;
                                                     failed if a pivot has succeeded
    (running|compensating, TimerFired at retry_at) → next attempt sent
    (running, TimerFired at the saga deadline)     → before the pivot: running step aborted
                                                     (unknown outcome) → compensating,
                                                     saga_timeout; after it: recorded once
    (running, CancelRequested)                     → before the pivot: as the deadline,
                                                     reason cancelled; after it: refused
    (compensating, CancelRequested)                → recorded, nothing else (not refused)
    (completed|compensated|failed, CancelRequested)→ refused
    (compensating, success for the awaited         → step compensated; next compensation
      compensation)                                  (reverse order), or compensated
    (compensating, failure / attempt timeout)      → retry while attempts remain, else
                                                     step compensation_failed → failed
    (failed, RetryRequested)                       → the failed compensation (→ compensating)
                                                     or post-pivot action (→ running) gets
                                                     a fresh budget; next attempt sent now
    (running|compensating|completed|compensated,   → refused
      RetryRequested)
    (any, reply not awaited: unknown step or kind, → reply.ignored recorded, nothing else
      stale/unsent attempt, duplicate, terminal)
    (any, TriggerRepeated)                         → trigger.repeated recorded
    (any, TimerFired with nothing due)             → unchanged (``changed=False``)

Which steps are compensated: those that succeeded, and those whose outcome is unknown
(status ``timed_out``: the last attempt timed out, or was in flight or timed out when the
saga was aborted), that have a compensation, one at a time, last step first. A step that
failed by an explicit failure reply is not compensated; a step without a compensation is
skipped (recorded as ``compensation.skipped``).
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import NamedTuple

from coordinator.errors import InvalidTransition
from schemas.envelope import FailedReply, Kind, SucceededReply

from .backoff import backoff_delay
from .commands import attempt_timeout, build_command, iso_utc
from .messages import (
    CancelRequested,
    Input,
    ReplyReceived,
    RetryRequested,
    SagaStarted,
    TimerFired,
    TriggerRepeated,
)
from .run import KINDS, Run, error_detail, utc
from .state import ErrorInfo, StepStatus

__all__ = [
    "ATTEMPT_TIMEOUT",
    "CANCELLED",
    "SAGA_TIMEOUT",
    "Timer",
    "apply",
    "pending_timers",
    "started",
    "wake_at",
]

ATTEMPT_TIMEOUT = "attempt_timeout"
"""Error code of an attempt that got no reply before its deadline."""
SAGA_TIMEOUT = "saga_timeout"
CANCELLED = "cancelled"
COMPENSABLE: tuple[StepStatus, ...] = ("succeeded", "timed_out")
DEADLINE_IGNORED = "saga.deadline_ignored"


# -- inputs ------------------------------------------------------------------------------


def started(run: Run, message: SagaStarted) -> None:
    """A new saga: record it and send attempt 1 of the first step."""
    run.record(
        "saga.started", source=message.source, key=message.key, message_id=message.message_id
    )
    _send(run, 0, "action")


def apply(run: Run, message: Input) -> tuple[bool, str | None]:
    """Fold one input into ``run.state``; return (changed, refused reason)."""
    match message:
        case ReplyReceived():
            _reply(run, message)
        case TimerFired():
            return _timer(run), None
        case CancelRequested():
            return True, _cancel(run, message)
        case RetryRequested():
            return True, _retry(run)
        case TriggerRepeated():
            run.record("trigger.repeated", source=message.source, message_id=message.message_id)
        case _:
            raise InvalidTransition(
                f"the engine takes ReplyReceived, TimerFired, CancelRequested, RetryRequested "
                f"or TriggerRepeated, not {type(message).__name__}"
            )
    return True, None


def _reply(run: Run, message: ReplyReceived) -> None:
    reply = message.reply
    if not isinstance(reply, SucceededReply | FailedReply):
        raise InvalidTransition(
            f"ReplyReceived.reply must be a SucceededReply or FailedReply, "
            f"not {type(reply).__name__}"
        )
    index, why = _awaited(run, message)
    if index is None:
        run.record(
            "reply.ignored",
            step=message.step if isinstance(message.step, str) else None,
            kind=message.kind if message.kind in KINDS else None,
            attempt=_int_or_none(message.attempt),
            reason=why,
            reply=reply.status,
            message_id=message.message_id,
        )
        return
    kind = message.kind
    if isinstance(reply, SucceededReply):
        _succeeded(run, index, kind, copy.deepcopy(dict(reply.output)), message.message_id)
    else:
        error = ErrorInfo(
            code=reply.error.code, message=reply.error.message, retryable=reply.error.retryable
        )
        _attempt_failed(run, index, kind, error, timed_out=False)


def _awaited(run: Run, message: ReplyReceived) -> tuple[int | None, str]:
    """The index of the step whose awaited attempt this reply answers, or why not."""
    status = run.state.status
    if status not in ("running", "compensating"):
        return None, f"the saga is {status}"
    index = run.index_of(message.step) if isinstance(message.step, str) else None
    if index is None:
        return None, f"unknown step {message.step!r}"
    if message.kind not in KINDS:
        return None, f"unknown kind {message.kind!r}"
    kind = message.kind
    step = run.step(index)
    if kind == "compensation" and run.step_def(index).compensation is None:
        return None, f"step {step.name!r} has no compensation"
    phase = run.phase(index, kind)
    attempt = _int_or_none(message.attempt)
    if attempt is None or attempt < 1 or attempt > phase.attempt:
        return None, f"attempt {message.attempt!r} was never sent (last sent: {phase.attempt})"
    if attempt < phase.attempt:
        return None, f"late reply: attempt {attempt} was followed by attempt {phase.attempt}"
    expected = "running" if kind == "action" else "compensating"
    if not phase.waiting or step.status != expected or status != expected:
        return None, (
            f"duplicate or late reply: the {kind} of step {step.name!r} is not awaiting a "
            f"reply (step {step.status}, saga {status})"
        )
    return index, ""


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _timer(run: Run) -> bool:
    """Handle everything due at ``run.at``, oldest first; False when nothing was due."""
    acted = False
    while True:
        due = [timer for timer in pending_timers(run) if timer.when <= run.at]
        if not due:
            break
        acted = True
        timer = due[0]
        if timer.step is None or timer.kind is None:
            deadline = iso_utc(timer.when)
            reason = ErrorInfo(code=SAGA_TIMEOUT, message=f"the saga's deadline {deadline} passed")
            _abort(run, reason, "saga.deadline_passed")
        elif run.phase(timer.step, timer.kind).waiting:
            timeout = attempt_timeout(run.definition, timer.step, timer.kind)
            error = ErrorInfo(
                code=ATTEMPT_TIMEOUT,
                message=f"no reply within {timeout.total_seconds():g}s",
                retryable=True,
            )
            _attempt_failed(run, timer.step, timer.kind, error, timed_out=True)
        else:
            _send(run, timer.step, timer.kind)
    state = run.state
    if (
        state.status == "running"
        and state.deadline is not None
        and utc(state.deadline) <= run.at
        and (pivot := run.passed_pivot()) is not None
        and not any(entry.event == DEADLINE_IGNORED for entry in state.history)
    ):
        run.record(DEADLINE_IGNORED, pivot=pivot)
        acted = True
    return acted


def _cancel(run: Run, message: CancelRequested) -> str | None:
    state = run.state
    if state.status == "compensating":
        run.record("cancel.ignored", reason=message.reason, why="the saga is compensating")
        return None
    if state.status != "running":
        refused = f"saga {state.id!r} is {state.status}: only a running saga can be cancelled"
    elif (pivot := run.passed_pivot()) is not None:
        refused = (
            f"saga {state.id!r} is past its pivot step {pivot!r}: it can no longer be "
            "cancelled or compensated"
        )
    else:
        _abort(run, ErrorInfo(code=CANCELLED, message=message.reason), "saga.cancelled")
        return None
    run.record("cancel.refused", reason=message.reason, refused=refused)
    return refused


def _retry(run: Run) -> str | None:
    state = run.state
    target = _resume_point(run) if state.status == "failed" else None
    if target is None:
        if state.status == "failed":
            refused = f"saga {state.id!r} is failed but has no failed step to resume"
        else:
            refused = f"saga {state.id!r} is {state.status}: only a failed saga can be retried"
        run.record("retry.refused", refused=refused)
        return refused
    index, kind = target
    phase = run.phase(index, kind)
    phase.budget_start = phase.attempt + 1
    state.status = "running" if kind == "action" else "compensating"
    if kind == "action":
        state.reason = None
    run.record("saga.retried", step=run.step(index).name, kind=kind, attempt=phase.attempt + 1)
    _send(run, index, kind)
    return None


def _resume_point(run: Run) -> tuple[int, Kind] | None:
    """Where a failed saga stopped: a failed compensation, else a failed (post-pivot) step."""
    for index, step in enumerate(run.state.steps):
        if step.status == "compensation_failed":
            return index, "compensation"
    for index, step in enumerate(run.state.steps):
        if step.status in ("failed", "timed_out"):
            return index, "action"
    return None


# -- timers ------------------------------------------------------------------------------


class Timer(NamedTuple):
    when: datetime
    rank: int
    """0 for the saga deadline, which goes first among timers due at the same instant."""
    step: int | None = None
    kind: Kind | None = None


def pending_timers(run: Run) -> list[Timer]:
    """Every timer still pending, earliest first: saga deadline, attempt deadlines, retries."""
    state = run.state
    timers: list[Timer] = []
    if state.status == "running" and state.deadline is not None and run.passed_pivot() is None:
        timers.append(Timer(utc(state.deadline), 0))
    for index in range(len(state.steps)):
        for kind in KINDS:
            phase = run.phase(index, kind)
            if phase.waiting and phase.deadline is not None:
                timers.append(Timer(utc(phase.deadline), 1, index, kind))
            elif phase.retry_at is not None:
                timers.append(Timer(utc(phase.retry_at), 1, index, kind))
    return sorted(timers)


def wake_at(run: Run) -> datetime | None:
    timers = pending_timers(run)
    return timers[0].when if timers else None


# -- rules -------------------------------------------------------------------------------


def _send(run: Run, index: int, kind: Kind) -> None:
    """Send the next attempt of a phase, or fail it at once if its input cannot resolve."""
    step, phase = run.step(index), run.phase(index, kind)
    attempt = phase.attempt + 1
    step.status = "running" if kind == "action" else "compensating"
    phase.retry_at = None
    phase.finished_at = None
    if phase.started_at is None:
        phase.started_at = run.at
    built = build_command(
        run.definition, run.state, index, kind, attempt, at=run.at, reply_to=run.reply_to
    )
    if isinstance(built, ErrorInfo):
        phase.error = built
        run.record(
            f"{kind}.unsendable", step=step.name, kind=kind, attempt=attempt, **error_detail(built)
        )
        _give_up(run, index, kind, built, timed_out=False)
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


def _succeeded(
    run: Run, index: int, kind: Kind, output: dict[str, object], message_id: str | None
) -> None:
    step, phase = run.step(index), run.phase(index, kind)
    phase.waiting, phase.deadline, phase.retry_at = False, None, None
    phase.finished_at, phase.error = run.at, None
    if kind == "compensation":
        step.status = "compensated"
        run.record(
            "compensation.succeeded",
            step=step.name,
            kind=kind,
            attempt=phase.attempt,
            message_id=message_id,
        )
        _next_compensation(run)
        return
    step.status, step.output = "succeeded", output
    run.record(
        "action.succeeded", step=step.name, kind=kind, attempt=phase.attempt, message_id=message_id
    )
    if run.step_def(index).pivot:
        run.record("pivot.passed", step=step.name)
    if index + 1 < len(run.state.steps):
        _send(run, index + 1, "action")
    else:
        run.state.status, run.state.reason = "completed", None
        run.record("saga.completed")


def _attempt_failed(run: Run, index: int, kind: Kind, error: ErrorInfo, *, timed_out: bool) -> None:
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
    _give_up(run, index, kind, error, timed_out=timed_out)


def _give_up(run: Run, index: int, kind: Kind, error: ErrorInfo, *, timed_out: bool) -> None:
    """A phase failed for good: compensate, or fail the saga for an operator."""
    step, phase = run.step(index), run.phase(index, kind)
    phase.waiting, phase.deadline, phase.retry_at, phase.finished_at = False, None, None, run.at
    if kind == "compensation":
        step.status = "compensation_failed"
        run.record("step.compensation_failed", step=step.name, kind=kind, attempt=phase.attempt)
        _fail(run, error, step.name)
        return
    step.status = "timed_out" if timed_out else "failed"
    run.record(f"step.{step.status}", step=step.name, kind=kind, attempt=phase.attempt)
    if run.passed_pivot() is not None:
        _fail(run, error, step.name)
    else:
        _compensate(run, error)


def _fail(run: Run, error: ErrorInfo, step: str) -> None:
    run.state.status, run.state.reason = "failed", error
    run.record("saga.failed", step=step, **error_detail(error))


def _abort(run: Run, reason: ErrorInfo, event: str) -> None:
    """Deadline or cancel before the pivot: stop the running step and compensate."""
    run.record(event, **error_detail(reason))
    for step in run.state.steps:
        if step.status != "running":
            continue
        phase = step.action
        unknown = phase.waiting or (phase.error is not None and phase.error.code == ATTEMPT_TIMEOUT)
        phase.waiting, phase.deadline, phase.retry_at, phase.finished_at = (
            False,
            None,
            None,
            run.at,
        )
        if unknown:
            step.status, phase.error = "timed_out", reason
        else:
            step.status = "failed"
        outcome = "unknown" if unknown else "failed"
        run.record(
            "step.aborted", step=step.name, kind="action", attempt=phase.attempt, outcome=outcome
        )
    _compensate(run, reason)


def _compensate(run: Run, reason: ErrorInfo) -> None:
    run.state.status, run.state.reason = "compensating", reason
    run.record("saga.compensating", **error_detail(reason))
    for index in reversed(range(len(run.state.steps))):
        step = run.step(index)
        if step.status in COMPENSABLE and run.step_def(index).compensation is None:
            run.record("compensation.skipped", step=step.name, why="the step has no compensation")
    _next_compensation(run)


def _next_compensation(run: Run) -> None:
    for index in reversed(range(len(run.state.steps))):
        if run.step(index).status in COMPENSABLE and run.step_def(index).compensation is not None:
            _send(run, index, "compensation")
            return
    run.state.status = "compensated"
    run.record("saga.compensated")
