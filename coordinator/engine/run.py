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
from schemas.definition import AnyStep, Leaf, RetryPolicy, SagaDefinition
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
    awaits: list[str] = field(default_factory=list)
    """Await steps that started waiting in this transition."""
    settling: bool = False
    """Set while the next compensations are chosen (see ``steps.next_compensations``)."""

    # -- look-ups ---------------------------------------------------------------------

    def leaf(self, index: int) -> Leaf:
        return self.definition.leaves[index]

    def step_def(self, index: int) -> AnyStep:
        return self.definition.leaves[index].step

    def item_indexes(self, top: int) -> list[int]:
        """The indexes of every step of the top-level item ``top`` (a step or a group)."""
        return [leaf.index for branch in self.definition.branches[top] for leaf in branch]

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
        step = self.step_def(index)
        if kind == "action":
            return self.definition.step_retry(step)
        return self.definition.compensation_retry(step)

    def passed_pivot(self) -> str | None:
        """The name of a pivot step that has succeeded, if any."""
        for leaf, step in zip(self.definition.leaves, self.state.steps, strict=True):
            if leaf.step.pivot and step.status == "succeeded":
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

    def record_repeat(
        self,
        event: str,
        same: tuple[str, ...],
        *,
        step: str | None = None,
        kind: Kind | None = None,
        attempt: int | None = None,
        **detail: Any,
    ) -> None:
        """Record a message that changes nothing, counting repeats on one entry.

        An entry of the same ``event``, step, kind and attempt whose ``detail`` has the same
        values for the keys in ``same`` is the same message again: its ``repeats`` is raised
        (and ``last_at`` set) instead of appending, so repeats never push transitions out of
        the bounded history.
        """
        history = self.state.history
        for position in range(len(history) - 1, -1, -1):
            entry = history[position]
            if (
                entry.event == event
                and (entry.step, entry.kind, entry.attempt) == (step, kind, attempt)
                and all(entry.detail.get(name) == detail.get(name) for name in same)
            ):
                repeats = int(entry.detail.get("repeats", 1)) + 1
                counted = {**entry.detail, "repeats": repeats, "last_at": self.at}
                # Entries are shared with the caller's state: replace, never change in place.
                history[position] = entry.model_copy(update={"detail": counted})
                return
        self.record(event, step=step, kind=kind, attempt=attempt, **detail)

    def emit(self, command: Command) -> None:
        self.commands.append(command)
        self.state.outbox.append(command)
