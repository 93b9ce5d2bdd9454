"""The working set of one transition: a copy of the state, the time, what was emitted.

``Run`` is bookkeeping only (history entries, the outbox, look-ups); the decisions that
use it live in ``transitions.py``. ``engine.py`` creates one ``Run`` per input, on a deep
copy of the stored state, so the caller's state is never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from coordinator.errors import InvalidTransition
from schemas.definition import RetryPolicy, SagaDefinition, Step
from schemas.envelope import Kind

from .state import Command, ErrorInfo, HistoryEntry, Phase, SagaState, StepState

__all__ = ["KINDS", "Run", "error_detail", "utc"]

KINDS: tuple[Kind, ...] = ("action", "compensation")


def utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one (as MongoDB gives back) is taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def error_detail(error: ErrorInfo) -> dict[str, Any]:
    return {"error": error.model_dump()}


@dataclass
class Run:
    """One transition in progress."""

    definition: SagaDefinition
    state: SagaState
    at: datetime
    reply_to: str
    random: Callable[[], float]
    commands: list[Command] = field(default_factory=list)

    # -- look-ups ---------------------------------------------------------------------

    def step_def(self, index: int) -> Step:
        return self.definition.steps[index]

    def step(self, index: int) -> StepState:
        return self.state.steps[index]

    def index_of(self, name: str) -> int | None:
        for index, step in enumerate(self.state.steps):
            if step.name == name:
                return index
        return None

    def phase(self, index: int, kind: Kind) -> Phase:
        step = self.state.steps[index]
        return step.action if kind == "action" else step.compensation

    def policy(self, index: int, kind: Kind) -> RetryPolicy:
        step = self.definition.steps[index]
        if kind == "action":
            return self.definition.step_retry(step)
        return self.definition.compensation_retry(step)

    def passed_pivot(self) -> str | None:
        """The name of a pivot step that has succeeded, if any."""
        for step_def, step in zip(self.definition.steps, self.state.steps, strict=True):
            if step_def.pivot and step.status == "succeeded":
                return step.name
        return None

    def draw(self) -> float:
        """One value of the caller's ``random()``, checked to be in [0, 1)."""
        value = self.random()
        if not isinstance(value, float | int) or not 0 <= value < 1:
            raise InvalidTransition(f"random() must return a float in [0, 1), not {value!r}")
        return float(value)

    # -- output -----------------------------------------------------------------------

    def record(
        self,
        event: str,
        *,
        step: str | None = None,
        kind: Kind | None = None,
        attempt: int | None = None,
        **detail: Any,
    ) -> None:
        """Append a history entry stamped with the time and the saga's current status."""
        self.state.history.append(
            HistoryEntry(
                at=self.at,
                event=event,
                step=step,
                kind=kind,
                attempt=attempt,
                status=self.state.status,
                detail=detail,
            )
        )

    def emit(self, command: Command) -> None:
        self.commands.append(command)
        self.state.outbox.append(command)
