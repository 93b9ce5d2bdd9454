"""Building one command (an outbox entry) for one attempt of a step's action or compensation.

The body is the step's ``input`` (or its compensation's) resolved against the saga: its
input, its id and key, and the outputs of the steps that succeeded. A reference with no
value, or a body that is not a JSON object, is not the participant's problem: the caller
gets an ``ErrorInfo`` back instead of a command and fails the step without sending.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.definition import AnyStep, SagaDefinition, Step
from schemas.envelope import (
    HEADER_ATTEMPT,
    HEADER_DEADLINE,
    HEADER_IDEMPOTENCY_KEY,
    HEADER_KIND,
    HEADER_SAGA_ID,
    HEADER_SAGA_NAME,
    HEADER_SAGA_VERSION,
    HEADER_STEP,
    HEADER_TRACEPARENT,
    Kind,
    idempotency_key,
)
from schemas.references import ReferenceMissing, ReferenceSyntaxError, resolve

from .state import Command, ErrorInfo, SagaState

__all__ = [
    "INVALID_INPUT",
    "REFERENCE_MISSING",
    "attempt_timeout",
    "build_command",
    "iso_utc",
    "message_id",
    "resolution_context",
    "skipped_steps",
]

REFERENCE_MISSING = "reference_missing"
INVALID_INPUT = "invalid_input"


def iso_utc(value: datetime) -> str:
    """ISO-8601 in UTC with a ``Z``: ``2026-01-02T03:04:05.250000Z``."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


def message_id(saga_id: str, step: str, kind: Kind, attempt: int) -> str:
    """Unique per publish of a command: one id per (saga, step, kind, attempt)."""
    return f"{saga_id}:{step}:{kind}:{attempt}"


def resolution_context(state: SagaState) -> dict[str, Any]:
    """What ``${…}`` references read at run time (``event`` is for triggers only)."""
    return {
        "input": state.input,
        "saga": {"id": state.id, "key": state.key},
        "steps": {
            step.name: {"output": step.output} for step in state.steps if step.output is not None
        },
    }


def skipped_steps(state: SagaState) -> frozenset[str]:
    """Steps whose output reads as null: skipped by their condition (or their group's)."""
    return frozenset(step.name for step in state.steps if step.status == "skipped")


def build_command(
    definition: SagaDefinition,
    state: SagaState,
    index: int,
    kind: Kind,
    attempt: int,
    *,
    at: datetime,
    reply_to: str,
    deadline: datetime,
    retry: int = 0,
) -> Command | ErrorInfo:
    """The command for ``attempt`` of step ``index``'s ``kind``, or why it cannot be built.

    ``deadline`` is the ``x-deadline`` header; ``retry`` the phase's operator retries.
    """
    leaf = definition.leaves[index]
    step = leaf.step
    unknown = skipped_steps(state)
    if kind == "action":
        assert isinstance(step, Step), "an await step sends no command"
        participant, command, template = step.participant, step.command, step.input
        where = f"{leaf.path}.input"
    else:
        assert step.compensation is not None
        participant = definition.compensation_participant(step)
        command, template = step.compensation.command, step.compensation.input
        where = f"{leaf.path}.compensation.input"
        if state.steps[index].output is None:
            # The action's outcome is unknown (it timed out or was aborted in flight): its
            # own output reads as null, and the participant finds what to undo by the
            # action's idempotency key.
            unknown = unknown | {step.name}
    try:
        body = resolve(template, resolution_context(state), unknown_steps=unknown)
    except ReferenceMissing as exc:
        return ErrorInfo(
            code=REFERENCE_MISSING,
            message=f"step {step.name!r}: {kind} input {where}: {exc}",
        )
    except ReferenceSyntaxError as exc:
        return ErrorInfo(code=INVALID_INPUT, message=f"step {step.name!r}: {where}: {exc}")
    if not isinstance(body, dict):
        return ErrorInfo(
            code=INVALID_INPUT,
            message=(
                f"step {step.name!r}: {kind} input {where} resolved to "
                f"{type(body).__name__}; a command body must be a JSON object"
            ),
        )
    return Command(
        message_id=message_id(state.id, step.name, kind, attempt),
        routing_key=f"{participant}.{command}",
        type=command,
        reply_to=reply_to,
        timestamp=at,
        headers=_headers(definition, state, step.name, kind, attempt, deadline, retry),
        body=copy.deepcopy(body),
    )


def attempt_timeout(definition: SagaDefinition, index: int, kind: Kind) -> timedelta:
    """How long one attempt of a command may take (an await step's wait is not an attempt)."""
    step: AnyStep = definition.leaves[index].step
    if kind == "action":
        assert isinstance(step, Step), "an await step has no attempts"
        return definition.step_timeout(step)
    return definition.compensation_timeout(step)


def _headers(
    definition: SagaDefinition,
    state: SagaState,
    step: str,
    kind: Kind,
    attempt: int,
    deadline: datetime,
    retry: int,
) -> dict[str, str | int]:
    headers: dict[str, str | int] = {
        HEADER_SAGA_ID: state.id,
        HEADER_SAGA_NAME: definition.name,
        HEADER_SAGA_VERSION: definition.version,
        HEADER_STEP: step,
        HEADER_KIND: kind,
        HEADER_ATTEMPT: attempt,
        HEADER_IDEMPOTENCY_KEY: idempotency_key(state.id, step, kind, retry),
        HEADER_DEADLINE: iso_utc(deadline),
    }
    if state.traceparent:
        headers[HEADER_TRACEPARENT] = state.traceparent
    return headers
