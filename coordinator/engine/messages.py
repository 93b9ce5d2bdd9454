"""What comes into the engine (past-tense facts) and what comes out of it.

Every input carries its own time (``at``): the engine never reads a clock. Randomness
(backoff jitter) is passed to ``engine.handle`` as a function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.envelope import FailedReply, Kind, SucceededReply

from .state import Awaiting, Command, SagaState

__all__ = [
    "CancelRequested",
    "EventReceived",
    "Input",
    "ReplyReceived",
    "RetryRequested",
    "SagaStarted",
    "TimerFired",
    "Transition",
    "TriggerRepeated",
]


@dataclass(frozen=True, slots=True)
class SagaStarted:
    """A new instance: from a trigger event or a REST call. The adapter chose the id."""

    saga_id: str
    key: str | None
    input: Any
    at: datetime
    source: str = "api"
    """``api`` or ``event:<routing key>``; recorded in the history."""
    message_id: str | None = None
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """A participant's reply, already decoded and checked for the contract headers."""

    step: str
    kind: Kind
    attempt: int
    reply: SucceededReply | FailedReply
    at: datetime
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The instance's ``wake_at`` has come: the engine handles whatever is due at ``at``."""

    at: datetime


@dataclass(frozen=True, slots=True)
class CancelRequested:
    reason: str
    at: datetime


@dataclass(frozen=True, slots=True)
class RetryRequested:
    """An operator asks a ``failed`` saga to resume where it stopped."""

    at: datetime


@dataclass(frozen=True, slots=True)
class TriggerRepeated:
    """A trigger event arrived for a business key that already has an instance."""

    at: datetime
    source: str
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class EventReceived:
    """An event of type ``event_type`` for this saga: it may complete a waiting step.

    The runtime finds the sagas through ``SagaState.awaiting`` (see ``engine.match_value``);
    the engine checks the match itself, so an event that matches nothing is only recorded.
    """

    event_type: str
    body: dict[str, Any]
    at: datetime
    message_id: str | None = None


Input = (
    ReplyReceived | TimerFired | CancelRequested | RetryRequested | TriggerRepeated | EventReceived
)


@dataclass(frozen=True, slots=True)
class Transition:
    """The engine's answer: the new state and the commands it emits.

    ``commands`` are also appended to ``state.outbox``, so persisting the state persists
    them. ``refused`` is set (and the state unchanged but for history) when a request
    cannot apply, e.g. a cancel after the pivot: the REST layer answers 409 with it.
    ``changed`` is false when nothing at all needs persisting. ``awaiting`` lists the await
    steps that started waiting in this transition: the runtime looks for a buffered event
    for each of them (and hands it in as an ``EventReceived``).
    """

    state: SagaState
    commands: list[Command] = field(default_factory=list)
    refused: str | None = None
    changed: bool = True
    awaiting: list[Awaiting] = field(default_factory=list)
