"""The saga instance document: what the engine folds messages into.

A ``SagaState`` is plain data that MongoDB stores as is (``to_document``) and gives back
(``from_document``). ``schema_version`` names the document format; ``revision`` is the
optimistic-concurrency counter, raised by one on every transition.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import Kind

__all__ = [
    "ENDED_STATUSES",
    "SCHEMA_VERSION",
    "Awaiting",
    "Command",
    "ErrorInfo",
    "HistoryEntry",
    "Phase",
    "SagaState",
    "SagaStatus",
    "StepState",
    "StepStatus",
]

SCHEMA_VERSION = 2
"""2: steps may be ``waiting``, ``skipped`` or ``aborted``; ``awaiting``, ``conditions``,
``StepState.unknown``, ``StepState.event_id`` and ``Phase.retries`` were added, all with
defaults, so that a version 1 document loads as is."""

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
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "compensated"})
ENDED_STATUSES: frozenset[str] = TERMINAL_STATUSES | {"failed"}
"""Statuses that end a saga's run: the terminal ones, and ``failed`` until an operator
retries it."""


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class ErrorInfo(_Doc):
    """Why an attempt, a step or a saga failed."""

    code: str
    message: str = ""
    retryable: bool = False


class Phase(_Doc):
    """Progress of one step's action or compensation.

    Attempt numbers only grow: an operator retry moves ``budget_start`` instead of
    resetting ``attempt``, so every (step, kind, attempt) names exactly one command.
    """

    attempt: int = 0
    """Number of the last attempt sent (0: none yet)."""
    budget_start: int = 1
    """The first attempt counted against the retry policy's ``max_attempts``."""
    waiting: bool = False
    """An attempt is in flight and its reply is awaited."""
    deadline: datetime | None = None
    """When the attempt in flight times out."""
    retry_at: datetime | None = None
    """When the next attempt is due, after a backoff."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: ErrorInfo | None = None
    retries: int = 0
    """Operator retries that resumed this phase: from 1 on, its commands carry the
    idempotency key ``<saga>:<step>:<kind>:r<retries>``."""


class StepState(_Doc):
    name: str
    status: StepStatus = "pending"
    output: dict[str, Any] | None = None
    action: Phase = Field(default_factory=Phase)
    compensation: Phase = Field(default_factory=Phase)
    unknown: bool = False
    """The action's outcome is unknown (in flight when it was aborted): it is compensated."""
    event_id: str | None = None
    """The ``message_id`` of the event that completed this await step."""


class Awaiting(_Doc):
    """What a ``waiting`` step waits for: an event type and this saga's correlation value.

    The runtime indexes ``awaiting.event`` + ``awaiting.value`` to find the sagas an event
    completes (a string or a number; numbers compare as numbers, as in JSON).
    """

    step: str
    event: str
    value: str | int | float
    since: datetime


class Command(_Doc):
    """A command to publish on the commands exchange (an outbox entry).

    Everything the adapter needs to publish the message is here: it adds nothing but the
    exchange name.
    """

    message_id: str
    routing_key: str
    type: str
    reply_to: str
    timestamp: datetime
    headers: dict[str, str | int]
    body: dict[str, Any]


class HistoryEntry(_Doc):
    """One recorded transition or received message, with its time."""

    at: datetime
    event: str
    """What happened, e.g. ``saga.started``, ``step.succeeded``, ``reply.ignored``."""
    step: str | None = None
    kind: Kind | None = None
    attempt: int | None = None
    status: str | None = None
    """The saga's status after this entry."""
    detail: dict[str, Any] = Field(default_factory=dict)


class SagaState(_Doc):
    schema_version: int = SCHEMA_VERSION
    id: str
    definition: str
    definition_version: int
    key: str | None = None
    input: Any = None
    status: SagaStatus = "running"
    steps: list[StepState]
    created_at: datetime
    updated_at: datetime
    deadline: datetime | None = None
    """The saga's own deadline (definition ``timeout``), if any."""
    reason: ErrorInfo | None = None
    """Why the saga is compensating or failed: the failed step's error, a timeout, a cancel."""
    wake_at: datetime | None = None
    """The earliest timer (attempt deadline, retry backoff, saga deadline) still pending."""
    traceparent: str | None = None
    revision: int = 0
    outbox: list[Command] = Field(default_factory=list)
    """Commands persisted with a transition and not yet confirmed published."""
    history: list[HistoryEntry] = Field(default_factory=list)
    history_dropped: int = 0
    """How many of the oldest history entries were dropped to keep the history bounded."""
    awaiting: list[Awaiting] = Field(default_factory=list)
    """One entry per ``waiting`` step: what it waits for, since when."""
    conditions: dict[str, bool] = Field(default_factory=dict)
    """The outcome of each ``when`` evaluated so far, by step or group name."""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def step(self, name: str) -> StepState:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def to_document(self) -> dict[str, Any]:
        """The MongoDB document: ``_id`` is the saga id, datetimes stay datetimes."""
        doc = self.model_dump(mode="python")
        doc["_id"] = doc.pop("id")
        return doc

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> SagaState:
        """A stored document, of this ``schema_version`` or an older one, as a state."""
        data = dict(doc)
        data["id"] = data.pop("_id")
        data["schema_version"] = SCHEMA_VERSION  # older versions only lack defaulted fields
        return cls.model_validate(data)
