"""Request and response bodies of the REST API (SPEC §5).

These models are the API's public shape: FastAPI validates requests with them and builds the
OpenAPI document at ``/docs`` from them. Errors are RFC 9457 problem details (``Problem``),
served as ``application/problem+json``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.definition import NAME_PATTERN, SagaDefinition

__all__ = [
    "CancelRequest",
    "DefinitionList",
    "DefinitionOut",
    "ErrorOut",
    "HistoryEntryOut",
    "HistoryOut",
    "PhaseOut",
    "Problem",
    "ProblemError",
    "SagaOut",
    "SagaPage",
    "SagaStatus",
    "SagaSummary",
    "StartSagaRequest",
    "StepOut",
]

SagaStatus = Literal["running", "compensating", "completed", "compensated", "failed"]
StepStatus = Literal[
    "pending",
    "running",
    "waiting",
    "succeeded",
    "skipped",
    "failed",
    "timed_out",
    "aborted",
    "compensating",
    "compensated",
    "compensation_failed",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


# -- problems (RFC 9457) ----------------------------------------------------------------
class ProblemError(_Response):
    """One thing at fault: a field (and its value), or a line of a definition."""

    field: str | None = Field(
        default=None, description="Dotted path of the field, e.g. `steps.1.timeout`."
    )
    location: Literal["body", "query", "path", "header"] | None = Field(
        default=None, description="Where the field is, for request errors."
    )
    line: int | None = Field(default=None, description="Line of a definition document.")
    value: Any = Field(default=None, description="The value at fault, when known.")
    message: str


class Problem(_Response):
    """An error, as RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[ProblemError] | None = None


# -- definitions ------------------------------------------------------------------------
class DefinitionOut(_Response):
    name: str
    version: int
    description: str
    trigger_event: str | None = Field(description="The event that starts it, if any.")
    registered_at: datetime
    content_hash: str = Field(description="sha256 of the definition's canonical JSON.")
    definition: SagaDefinition
    source: str = Field(description="The YAML or JSON text it was registered from.")
    retired: bool = Field(
        default=False,
        description="Retired: its trigger starts no saga until a new version is registered.",
    )


class DefinitionList(_Response):
    items: list[DefinitionOut]


# -- sagas ------------------------------------------------------------------------------
class StartSagaRequest(_Request):
    definition: str = Field(pattern=NAME_PATTERN, description="The definition's name.")
    version: int | None = Field(
        default=None,
        ge=1,
        le=2**63 - 1,
        strict=True,
        description="A registered version; default: the latest.",
    )
    input: dict[str, Any] = Field(
        description="The saga input, a JSON object (`${input...}` in the definition)."
    )
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="Business key: one instance per (definition, key).",
    )


class CancelRequest(_Request):
    reason: str = Field(min_length=1, max_length=2000)


class EventRequest(_Request):
    event: str = Field(
        min_length=1,
        max_length=255,
        description="The event type a waiting `await` step waits for, e.g. `order.approved`.",
    )
    body: dict[str, Any] = Field(
        description="The event, a JSON object: it must carry the step's correlation value "
        "(`await.match`), and becomes the step's output."
    )
    message_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The event's id: the same id never completes two steps of a saga.",
    )


class AwaitOut(_Response):
    """What a `waiting` step waits for."""

    event: str = Field(description="The event type.")
    value: str | int | float = Field(description="The correlation value it must carry.")
    since: datetime = Field(description="When the step started waiting.")


class ErrorOut(_Response):
    code: str
    message: str
    retryable: bool


class PhaseOut(_Response):
    """One step's action or compensation: its attempts, last error and times."""

    attempts: int = Field(description="Attempts sent so far (0: none yet).")
    waiting: bool = Field(description="An attempt is in flight and its reply awaited.")
    error: ErrorOut | None
    started_at: datetime | None
    finished_at: datetime | None
    attempt_deadline: datetime | None = Field(description="When the attempt in flight times out.")
    next_attempt_at: datetime | None = Field(description="When the next attempt is due.")


class StepOut(_Response):
    name: str
    status: StepStatus
    group: str | None = Field(default=None, description="The parallel group it belongs to.")
    branch: str | None = Field(default=None, description="Its branch in that group.")
    condition: bool | None = Field(
        default=None,
        description="Its `when` outcome (or its group's), once evaluated; null without one.",
    )
    awaiting: AwaitOut | None = Field(
        default=None, description="What it waits for, while `waiting`."
    )
    output: dict[str, Any] | None
    attempts: int
    error: ErrorOut | None
    started_at: datetime | None
    finished_at: datetime | None
    action: PhaseOut
    compensation: PhaseOut | None = Field(description="Absent until compensation begins.")


class SagaSummary(_Response):
    id: str
    definition: str
    version: int
    key: str | None
    status: SagaStatus
    reason: ErrorOut | None
    deadline: datetime | None
    created_at: datetime
    updated_at: datetime


class SagaOut(SagaSummary):
    input: Any
    steps: list[StepOut]


class SagaPage(_Response):
    items: list[SagaSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class HistoryEntryOut(_Response):
    at: datetime
    event: str
    step: str | None
    kind: Literal["action", "compensation"] | None
    attempt: int | None
    status: str | None
    detail: dict[str, Any]


class HistoryOut(_Response):
    saga_id: str
    items: list[HistoryEntryOut] = Field(description="Oldest first.")
