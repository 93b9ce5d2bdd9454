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
    "SCHEMA_VERSION",
    "Command",
    "ErrorInfo",
    "HistoryEntry",
    "Phase",
    "SagaState",
    "SagaStatus",
    "StepState",
    "StepStatus",
]

SCHEMA_VERSION = 1

SagaStatus = Literal["running", "compensating", "completed", "compensated", "failed"]
StepStatus = Literal[
    "pending",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "compensating",
    "compensated",
    "compensation_failed",
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "compensated"})


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


class StepState(_Doc):
    name: str
    status: StepStatus = "pending"
    output: dict[str, Any] | None = None
    action: Phase = Field(default_factory=Phase)
    compensation: Phase = Field(default_factory=Phase)


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
        data = dict(doc)
        data["id"] = data.pop("_id")
        return cls.model_validate(data)
