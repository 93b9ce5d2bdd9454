"""A saga's timeline, laid out for SVG: lanes, attempt bars, backoffs, markers and an axis.

Pure: it reads a ``SagaState`` (its history and its steps' times) and returns geometry;
the template draws it. Every bar is one attempt of a step's action or compensation, from
the ``<kind>.sent`` entry to the entry that ended it (``<kind>.succeeded``, ``.failed``,
``.timed_out``, ``step.aborted``…), or to the end of the picture while it is in flight.
A retry's backoff is the gap from ``<kind>.retry_scheduled`` to the next attempt. A step
that is ``waiting`` (an awaited event) with no attempt in flight is drawn from its start,
dashed.

Lanes come from the data: a step that carries ``group`` and ``branch`` (a parallel group's
branch), or that the definition places in one (``branches_of``), shares the lane of its
branch, so branches stand side by side; any other step has a lane of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coordinator.engine.state import ENDED_STATUSES, HistoryEntry, SagaState, StepState

__all__ = [
    "Bar",
    "Branches",
    "Lane",
    "Marker",
    "Tick",
    "Timeline",
    "branches_of",
    "build_timeline",
    "format_seconds",
]

WIDTH = 980
LABEL_WIDTH = 190
RIGHT_PAD = 24
TOP = 38
LANE_HEIGHT = 34
BAR_HEIGHT = 18
MIN_BAR = 5.0
END_PAD = 1.04
"""The axis runs a little past the end, so that what ends last stays visible."""
MARKER_GAP = 90.0
"""Markers closer than this (px) put their labels on alternate rows."""

_OPENING = frozenset({"sent", "waiting"})
_NOT_CLOSING = frozenset({"sent", "waiting", "retry_scheduled", "unsendable"})
_MARKERS = {
    "saga.cancelled": "cancelled",
    "saga.deadline_passed": "deadline",
    "saga.compensating": "compensating",
    "saga.failed": "failed",
    "saga.retried": "retried",
}


@dataclass(frozen=True, slots=True)
class Bar:
    """One attempt (or a backoff) on a lane, in pixels and in seconds from the start."""

    x: float
    width: float
    y: float
    height: float
    kind: str  # action, compensation, backoff, waiting
    outcome: str  # succeeded, failed, timed_out, aborted, in_flight, waiting, backoff…
    label: str
    title: str


@dataclass(frozen=True, slots=True)
class Marker:
    x: float
    label: str
    title: str
    label_y: float = 13.0


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    label: str


@dataclass(slots=True)
class Lane:
    key: str
    label: str
    y: float
    statuses: list[tuple[str, str]] = field(default_factory=list)  # (step, status)


@dataclass(slots=True)
class Timeline:
    width: int
    height: int
    plot_left: float
    plot_right: float
    axis_y: float
    span_seconds: float
    lanes: list[Lane]
    bars: list[Bar]
    markers: list[Marker]
    ticks: list[Tick]
    description: str


def format_seconds(seconds: float) -> str:
    """``0.25s``, ``4s``, ``2m05s``, ``1h10m``: short, for axis labels and titles."""
    if seconds < 10:
        return f"{seconds:.2f}".rstrip("0").rstrip(".") + "s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}m{rest:02d}s" if rest else f"{minutes}m"
    hours, rest = divmod(round(seconds) // 60, 60)
    return f"{hours}h{rest:02d}m" if rest else f"{hours}h"


_TICK_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)


def _tick_step(span: float) -> float:
    for step in _TICK_STEPS:
        if span / step <= 8:
            return float(step)
    return float(span / 8)


Branches = Mapping[str, tuple[str, str]]
"""Step name to (group, branch), as the definition lays them out."""


def branches_of(definition: Any) -> dict[str, tuple[str, str]]:
    """The (group, branch) of every step inside a parallel group of ``definition``."""
    found: dict[str, tuple[str, str]] = {}
    for step in getattr(definition, "steps", ()):
        for branch, inner in (getattr(step, "parallel", None) or {}).items():
            for sub in inner:
                found[sub.name] = (step.name, branch)
    return found


def _lane_key(step: StepState | Any, branches: Branches) -> tuple[str, str]:
    group = getattr(step, "group", None)
    branch = getattr(step, "branch", None)
    if not (group and branch) and step.name in branches:
        group, branch = branches[step.name]
    if group and branch:
        return f"{group}/{branch}", f"{group}: {branch}"
    return f"step:{step.name}", str(step.name)


@dataclass(slots=True)
class _Open:
    start: datetime
    kind: str
    step: str
    attempt: int | None
    waiting: bool


class _Layout:
    """Walks the history once, turning attempts and backoffs into bars."""

    def __init__(self, state: SagaState, now: datetime, branches: Branches) -> None:
        self.state = state
        self.start = state.created_at
        end = state.updated_at
        if state.history:
            end = max(end, state.history[-1].at)
        if state.status not in ENDED_STATUSES:
            end = max(end, now)
        self.end = end
        self.span = max((end - self.start).total_seconds(), 0.5) * END_PAD
        self.left, self.right = float(LABEL_WIDTH), float(WIDTH - RIGHT_PAD)
        self.lanes: dict[str, Lane] = {}
        self.lane_of_step: dict[str, Lane] = {}
        for step in state.steps:
            key, label = _lane_key(step, branches)
            lane = self.lanes.get(key)
            if lane is None:
                y = TOP + len(self.lanes) * LANE_HEIGHT
                lane = self.lanes[key] = Lane(key=key, label=label, y=y)
            lane.statuses.append((step.name, step.status))
            self.lane_of_step[step.name] = lane
        self.bars: list[Bar] = []
        self.markers: list[Marker] = []
        self.with_bars: set[str] = set()
        self.opened: dict[tuple[str, str, int | None], _Open] = {}
        self.backoffs: dict[tuple[str, str, int | None], datetime] = {}

    def x_of(self, at: datetime) -> float:
        seconds = min(max((at - self.start).total_seconds(), 0.0), self.span)
        return self.left + (self.right - self.left) * seconds / self.span

    def offset(self, at: datetime) -> str:
        return "+" + format_seconds((at - self.start).total_seconds())

    def add_bar(
        self,
        step: str,
        since: datetime,
        until: datetime,
        kind: str,
        outcome: str,
        label: str,
        title: str,
    ) -> None:
        lane = self.lane_of_step[step]
        self.with_bars.add(step)
        x1, x2 = self.x_of(since), self.x_of(until)
        height = 4.0 if kind == "backoff" else float(BAR_HEIGHT)
        y = lane.y + (LANE_HEIGHT - height) / 2
        self.bars.append(Bar(x1, max(x2 - x1, MIN_BAR), y, height, kind, outcome, label, title))

    def entry(self, entry: HistoryEntry) -> None:
        if entry.event in _MARKERS:
            x = self.x_of(entry.at)
            previous = self.markers[-1] if self.markers else None
            crowded = previous is not None and x - previous.x < MARKER_GAP
            row = 27.0 if crowded and previous is not None and previous.label_y < 20 else 13.0
            self.markers.append(_marker(entry, x, self.offset(entry.at), row))
        if entry.step is None or entry.step not in self.lane_of_step:
            return
        prefix, _, suffix = entry.event.rpartition(".")
        kind = entry.kind or ("action" if prefix == "step" else prefix)
        ident = (entry.step, kind, entry.attempt)
        if suffix == "retry_scheduled":
            self.backoffs[ident] = entry.at
        elif suffix in _OPENING:
            if (since := self.backoffs.pop(ident, None)) is not None:
                took = format_seconds((entry.at - since).total_seconds())
                title = f"{entry.step}: backoff of {took} before attempt {entry.attempt}"
                self.add_bar(entry.step, since, entry.at, "backoff", "backoff", "", title)
            waiting = suffix == "waiting"
            self.opened[ident] = _Open(entry.at, kind, entry.step, entry.attempt, waiting)
        elif suffix not in _NOT_CLOSING and (began := self.opened.pop(ident, None)):
            title = _bar_title(began, suffix, entry, self.offset(began.start))
            self.add_bar(
                began.step, began.start, entry.at, began.kind, suffix, _bar_label(began), title
            )

    def finish(self) -> None:
        """Close what is still open at the end of the picture."""
        for (name, _kind, attempt), since in self.backoffs.items():
            title = f"{name}: waiting to send attempt {attempt}"
            self.add_bar(name, since, self.end, "backoff", "backoff", "", title)
        for began in self.opened.values():
            outcome = "waiting" if began.waiting else "in_flight"
            kind = "waiting" if began.waiting else began.kind
            title = f"{began.step} {began.kind} #{began.attempt}: {outcome.replace('_', ' ')}"
            self.add_bar(began.step, began.start, self.end, kind, outcome, _bar_label(began), title)
        for step in self.state.steps:
            status: str = step.status  # ``waiting``: an awaited event
            if status == "waiting" and step.name not in self.with_bars:
                since = step.action.started_at or self.start
                title = f"{step.name}: waiting for an event since {self.offset(since)}"
                self.add_bar(step.name, since, self.end, "waiting", "waiting", "waiting", title)

    def ticks(self) -> list[Tick]:
        size = _tick_step(self.span)
        count = int(self.span / size + 1e-9) + 1
        width = self.right - self.left
        return [
            Tick(self.left + width * i * size / self.span, format_seconds(i * size))
            for i in range(count)
        ]


def build_timeline(state: SagaState, now: datetime, branches: Branches | None = None) -> Timeline:
    """Lay out ``state``'s timeline; ``now`` ends the picture of a saga still going.

    ``branches`` (``branches_of(definition)``) puts the steps of a parallel group's branch
    on one lane when the steps themselves do not say where they belong.
    """
    layout = _Layout(state, now, branches or {})
    for entry in state.history:
        layout.entry(entry)
    layout.finish()
    lanes = list(layout.lanes.values())
    axis_y = TOP + max(len(lanes), 1) * LANE_HEIGHT + 6
    description = (
        f"{len(layout.bars)} bars on {len(lanes)} lanes over "
        f"{format_seconds(layout.span)}; the steps table and the history give the same facts"
    )
    return Timeline(
        width=WIDTH,
        height=int(axis_y + 30),
        plot_left=layout.left,
        plot_right=layout.right,
        axis_y=axis_y,
        span_seconds=layout.span,
        lanes=lanes,
        bars=layout.bars,
        markers=layout.markers,
        ticks=layout.ticks(),
        description=description,
    )


def _bar_label(began: _Open) -> str:
    if began.waiting:
        return "waiting"
    prefix = "undo " if began.kind == "compensation" else ""
    return f"{prefix}#{began.attempt}" if began.attempt is not None else prefix.strip()


def _bar_title(began: _Open, outcome: str, entry: HistoryEntry, at: str) -> str:
    took = format_seconds((entry.at - began.start).total_seconds())
    text = f"{began.step} {began.kind} #{began.attempt}: {outcome.replace('_', ' ')} "
    text += f"({at}, took {took})"
    error = entry.detail.get("error")
    if isinstance(error, dict) and error.get("code"):
        text += f" — {error.get('code')}: {error.get('message', '')}"
    return text


def _marker(entry: HistoryEntry, x: float, at: str, label_y: float) -> Marker:
    label = _MARKERS[entry.event]
    title = f"{entry.event} at {at}"
    error = entry.detail.get("error")
    if isinstance(error, dict):
        title += f": {error.get('code')}: {error.get('message', '')}"
    elif "reason" in entry.detail:
        title += f": {entry.detail['reason']}"
    return Marker(x=x, label=label, title=title, label_y=label_y)
