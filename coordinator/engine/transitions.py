"""The saga state machine. ALL transition logic lives in this module and in ``flow.py``
(the way forward: conditions, groups, await steps) and ``steps.py`` (one step's phases:
attempts, failures, aborts, compensation order).

Nothing else decides what happens to a saga: ``engine.py`` checks the call, copies the
state and stamps the result (revision, ``updated_at``, ``wake_at``, history trimming);
``commands.py`` only builds a command; ``backoff.py`` only computes a delay. Every function
works on a ``Run`` (a private copy of the state plus the input's time) and appends a
history entry for everything it does.

Several phases may be active at once: one per branch of a running parallel group, or one
compensation per branch of a group being compensated. Attempts only count up; an operator
retry moves the phase's ``budget_start`` and raises its ``retries`` instead of resetting
it, so (step, kind, attempt) names one command.

    (saga status, input)                           → outcome
    ─────────────────────────────────────────────────────────────────────────────────────
    (—, SagaStarted)                               → running; the first item started
    starting an item                               → its ``when`` false: skipped (a group:
                                                     all its steps), next item; error:
                                                     step failed, condition_error; a group
                                                     starts the first step of each branch;
                                                     an await step becomes waiting
    (running, success for the awaited action)      → step succeeded; next step of its
                                                     branch, or (group done) next item, or
                                                     completed after the last one
    (running, retryable failure / TimerFired at    → attempt failed; retry_at = now+backoff
      the attempt deadline)                          while attempts remain, else as below
    (running, non-retryable failure / exhausted)   → step failed (timed_out if the last
                                                     attempt timed out); in a group, the
                                                     other steps in flight aborted →
                                                     compensating; failed past a pivot
    (running, EventReceived matching a waiting     → step succeeded, output = event body;
      step, message_id not seen)                     then as a success
    (running, TimerFired at an await's timeout)    → step failed, await_timeout, not retried
    (running|compensating, TimerFired at retry_at) → next attempt sent
    (running, TimerFired at the saga deadline)     → before the pivot: running steps aborted
                                                     (compensated if in flight), waiting
                                                     ones aborted → compensating,
                                                     saga_timeout; after it: recorded once
    (running, CancelRequested)                     → before the pivot: as the deadline,
                                                     reason cancelled; after it: refused
    (compensating, CancelRequested)                → recorded, nothing else (not refused)
    (completed|compensated|failed, CancelRequested)→ refused
    (compensating, success for an awaited          → step compensated; the compensations
      compensation)                                  now due sent, or compensated
    (compensating, failure / attempt timeout)      → retry while attempts remain, else step
                                                     compensation_failed → failed once no
                                                     other compensation is in flight
    (failed, RetryRequested)                       → every failed compensation (→
                                                     compensating) or the failed post-pivot
                                                     steps (→ running) get a fresh budget
                                                     and key ``…:r<n>``; sent now
    (running|compensating|completed|compensated,   → refused
      RetryRequested)
    (any, reply not awaited: unknown step or kind, → reply.ignored recorded (repeats
      stale/unsent attempt, duplicate, terminal)     counted on one entry), nothing else
    (any, EventReceived matching no waiting step)  → event.ignored recorded (repeats counted)
    (any, TriggerRepeated)                         → trigger.repeated recorded (counted)
    (any, TimerFired with nothing due)             → unchanged (``changed=False``)

The saga's ``reason`` keeps the first cause (the failed step's error, the deadline, the
cancel); later ones (a compensation exhausted) are in the history only. Which steps are
compensated, and in which order, is described in ``steps.py``.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import NamedTuple

from coordinator.errors import InvalidTransition
from schemas.definition import AwaitStep
from schemas.envelope import FailedReply, Kind, SucceededReply

from .commands import attempt_timeout, iso_utc
from .flow import after_leaf, await_timed_out, begin_wait, match_value, same_value, start_item
from .messages import (
    CancelRequested,
    EventReceived,
    Input,
    ReplyReceived,
    RetryRequested,
    SagaStarted,
    TimerFired,
    TriggerRepeated,
)
from .run import KINDS, Run, error_detail, utc
from .state import ErrorInfo
from .steps import (
    ATTEMPT_TIMEOUT,
    abort_leaf,
    attempt_failed,
    compensate,
    next_compensations,
    send,
    stop_waiting,
)

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

SAGA_TIMEOUT = "saga_timeout"
CANCELLED = "cancelled"
DEADLINE_IGNORED = "saga.deadline_ignored"


# -- inputs ------------------------------------------------------------------------------


def started(run: Run, message: SagaStarted) -> None:
    """A new saga: record it and start its first item."""
    run.record(
        "saga.started", source=message.source, key=message.key, message_id=message.message_id
    )
    start_item(run, 0)


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
            run.record_repeat(
                "trigger.repeated",
                ("source",),
                source=message.source,
                message_id=message.message_id,
            )
        case EventReceived():
            _event(run, message)
        case _:
            raise InvalidTransition(
                f"the engine takes ReplyReceived, TimerFired, CancelRequested, RetryRequested, "
                f"TriggerRepeated or EventReceived, not {type(message).__name__}"
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
        run.record_repeat(
            "reply.ignored",
            ("reply", "reason"),
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
        attempt_failed(run, index, kind, error, timed_out=False)


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


def _event(run: Run, message: EventReceived) -> None:
    """An event: completes the first waiting step it matches, at most once per message."""
    state = run.state
    if message.message_id is not None and any(
        step.event_id == message.message_id for step in state.steps
    ):
        _event_ignored(run, message, "this event already completed a step")
        return
    if state.status == "running" and isinstance(message.body, dict):
        for entry in state.awaiting:
            index = run.index_of(entry.step)
            step_def = run.step_def(index) if index is not None else None
            if index is None or not isinstance(step_def, AwaitStep):
                continue
            if entry.event != message.event_type:
                continue
            if same_value(match_value(step_def, message.body), entry.value):
                _event_matched(run, index, message)
                return
    _event_ignored(run, message, f"no step of this saga waits for it (saga {state.status})")


def _event_ignored(run: Run, message: EventReceived, reason: str) -> None:
    """Record that ``message`` changed nothing (counted in place when it repeats)."""
    run.record_repeat(
        "event.ignored",
        ("event_type", "message_id", "reason"),
        reason=reason,
        event_type=message.event_type,
        message_id=message.message_id,
    )


def _event_matched(run: Run, index: int, message: EventReceived) -> None:
    step, phase = run.step(index), run.phase(index, "action")
    stop_waiting(run, index)
    phase.waiting, phase.deadline, phase.finished_at, phase.error = False, None, run.at, None
    step.status, step.output, step.event_id = (
        "succeeded",
        copy.deepcopy(message.body),
        (message.message_id),
    )
    run.record(
        "event.received",
        step=step.name,
        kind="action",
        attempt=phase.attempt,
        event_type=message.event_type,
        message_id=message.message_id,
    )
    _forward(run, index)


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
        elif run.step(timer.step).status == "waiting":
            await_timed_out(run, timer.step)
        elif run.phase(timer.step, timer.kind).waiting:
            timeout = attempt_timeout(run.definition, timer.step, timer.kind)
            error = ErrorInfo(
                code=ATTEMPT_TIMEOUT,
                message=f"no reply within {timeout.total_seconds():g}s",
                retryable=True,
            )
            attempt_failed(run, timer.step, timer.kind, error, timed_out=True)
        else:
            send(run, timer.step, timer.kind)
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
    targets = _resume_points(run) if state.status == "failed" else []
    if not targets:
        if state.status == "failed":
            refused = f"saga {state.id!r} is failed but has no failed step to resume"
        else:
            refused = f"saga {state.id!r} is {state.status}: only a failed saga can be retried"
        run.record("retry.refused", refused=refused)
        return refused
    kind = targets[0][1]
    state.status = "running" if kind == "action" else "compensating"
    if kind == "action":
        state.reason = None
    for index, _ in targets:
        phase = run.phase(index, kind)
        phase.budget_start = phase.attempt + 1
        phase.retries += 1
        run.record(
            "saga.retried",
            step=run.step(index).name,
            kind=kind,
            attempt=phase.attempt + 1,
            retry=phase.retries,
        )
    for index, _ in targets:
        if kind == "action" and isinstance(run.step_def(index), AwaitStep):
            begin_wait(run, index)
        else:
            send(run, index, kind)
    return None


def _resume_points(run: Run) -> list[tuple[int, Kind]]:
    """Where a failed saga stopped: its failed compensations, else its failed (post-pivot)
    steps, with the steps of their group cut short by the failure."""
    steps = run.state.steps
    failed = [i for i, step in enumerate(steps) if step.status == "compensation_failed"]
    if failed:
        return [(i, "compensation") for i in failed]
    stopped = ("failed", "timed_out", "aborted")
    return [(i, "action") for i, step in enumerate(steps) if step.status in stopped]


# -- timers ------------------------------------------------------------------------------


class Timer(NamedTuple):
    when: datetime
    rank: int
    """0 for the saga deadline, which goes first among timers due at the same instant."""
    step: int | None = None
    kind: Kind | None = None


def pending_timers(run: Run) -> list[Timer]:
    """Every timer still pending, earliest first: saga deadline, attempt deadlines, await
    timeouts, retries."""
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
        next_compensations(run)
        return
    step.status, step.output, step.unknown = "succeeded", output, False
    run.record(
        "action.succeeded", step=step.name, kind=kind, attempt=phase.attempt, message_id=message_id
    )
    _forward(run, index)


def _forward(run: Run, index: int) -> None:
    if run.step_def(index).pivot:
        run.record("pivot.passed", step=run.step(index).name)
    after_leaf(run, index)


def _abort(run: Run, reason: ErrorInfo, event: str) -> None:
    """Deadline or cancel before the pivot: cut every running step short and compensate."""
    run.record(event, **error_detail(reason))
    for index in range(len(run.state.steps)):
        abort_leaf(run, index, reason)
    compensate(run, reason)
