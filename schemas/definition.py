"""Pydantic models of the saga definition format (SPEC §2).

These models are the single source of the format: the loader validates YAML with them, the
engine reads them, and the JSON Schema in ``schemas/saga-definition.schema.json`` is
generated from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from itertools import groupby
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from schemas.conditions import ConditionError, compile_condition

if TYPE_CHECKING:
    import cel

__all__ = [
    "MAX_DURATION",
    "STEP_KINDS",
    "AnyStep",
    "AwaitSpec",
    "AwaitStep",
    "Compensation",
    "Defaults",
    "Duration",
    "Group",
    "Leaf",
    "RetryPolicy",
    "SagaDefinition",
    "Step",
    "StepItem",
    "Trigger",
    "format_duration",
    "parse_duration",
]

_DURATION_RE = re.compile(r"^(\d{1,15})(ms|s|m|h|d)$")
MAX_DURATION = timedelta(days=365)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DURATION_PATTERN = r"^[0-9]+(ms|s|m|h|d)$"


def parse_duration(value: object) -> timedelta:
    """Parse ``500ms``, ``30s``, ``5m``, ``2h`` or ``1d`` into a timedelta."""
    if isinstance(value, timedelta):
        if value > MAX_DURATION:
            raise ValueError(f"duration {format_duration(value)} is longer than the longest, 365d")
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"a duration is a string such as 500ms, 30s, 5m, 2h or 1d, not {value!r}")
    match = _DURATION_RE.match(value.strip())
    if match is None:
        if re.match(r"^\d{16,}(ms|s|m|h|d)$", value.strip()):
            raise ValueError(f"duration {value[:40]!r} is too long: the longest is 365d")
        raise ValueError(
            f"invalid duration {value[:60]!r}: use a whole number and one of ms, s, m, h, d "
            "(for example 500ms, 30s, 5m, 2h, 1d)"
        )
    ms = int(match.group(1)) * _UNIT_MS[match.group(2)]
    if ms > MAX_DURATION // timedelta(milliseconds=1):
        raise ValueError(f"duration {value!r} is longer than the longest allowed, 365d")
    return timedelta(milliseconds=ms)


def format_duration(value: timedelta) -> str:
    """The shortest exact text for a duration: ``timedelta(seconds=90)`` → ``90s``."""
    ms = round(value.total_seconds() * 1000)
    for unit in ("d", "h", "m", "s"):
        if ms and ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["500ms", "30s"]}),
]


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("a timeout must be longer than zero, for example 30s")
    return value


# A deadline: a duration longer than zero.
Timeout = Annotated[Duration, AfterValidator(_positive)]

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
# A participant or command name is one routing-key word: no dots, no wildcards.
WORD_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
# An event type is a routing key: dot-separated words, no wildcards.
EVENT_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


_DEFAULT_MAX_BACKOFF = timedelta(minutes=1)


def _optional(**kwargs: Any) -> Any:
    """A field that is left out of dumps while unset, so that definitions stored before it
    existed keep their canonical form (and content hash)."""
    return Field(default=None, exclude_if=lambda value: value is None, **kwargs)


class RetryPolicy(_Model):
    """Exponential backoff, capped, with jitter.

    Without ``max_backoff``, the cap is one minute, or ``backoff`` itself when that is longer:
    a policy never has a cap below its first delay, whether it is read from YAML or from the
    stored form of a registered definition.
    """

    max_attempts: int = Field(default=3, ge=1, le=1000, strict=True)
    backoff: Duration = timedelta(seconds=1)
    multiplier: float = Field(default=2.0, ge=1.0, le=100.0, strict=True)
    max_backoff: Duration = _DEFAULT_MAX_BACKOFF

    @model_validator(mode="before")
    @classmethod
    def _default_cap(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_backoff" not in data and "backoff" in data:
            try:
                backoff = parse_duration(data["backoff"])
            except ValueError:
                return data  # the field's own validation reports it
            if backoff > _DEFAULT_MAX_BACKOFF:
                return {**data, "max_backoff": backoff}
        return data

    @field_validator("max_backoff")
    @classmethod
    def _cap_not_below_backoff(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        backoff = info.data.get("backoff")
        if isinstance(backoff, timedelta) and value < backoff:
            raise ValueError(
                f"max_backoff ({format_duration(value)}) is shorter than backoff "
                f"({format_duration(backoff)}); the cap must be at least the first delay"
            )
        return value


class Defaults(_Model):
    """Values that apply to every step and compensation that does not set its own."""

    timeout: Timeout = timedelta(seconds=30)
    retry: RetryPolicy = RetryPolicy()


class Trigger(_Model):
    """The event that starts a saga: one instance per business key."""

    event: str = Field(min_length=1, max_length=255, pattern=EVENT_PATTERN)
    key: str = Field(min_length=1, max_length=1000)
    input: Any = "${event}"


class Compensation(_Model):
    """The command that undoes a step; ``participant`` defaults to the step's."""

    participant: str | None = _optional(pattern=WORD_PATTERN)
    command: str = Field(pattern=WORD_PATTERN)
    input: Any = Field(default_factory=dict)
    timeout: Timeout | None = None
    retry: RetryPolicy | None = None


def _check_condition(value: str | None) -> str | None:
    if value is not None:
        try:
            compile_condition(value)
        except ConditionError as exc:
            raise ValueError(str(exc)) from None
    return value


# A CEL expression; validated by compiling it.
Condition = Annotated[str, Field(min_length=1), AfterValidator(_check_condition)]


class Step(_Model):
    """One command to one participant, with its optional compensation."""

    name: str = Field(pattern=NAME_PATTERN)
    when: Condition | None = _optional()
    participant: str = Field(pattern=WORD_PATTERN)
    command: str = Field(pattern=WORD_PATTERN)
    input: Any = Field(default_factory=dict)
    timeout: Timeout | None = None
    retry: RetryPolicy | None = None
    pivot: bool = Field(default=False, strict=True)
    compensation: Compensation | None = None


class AwaitSpec(_Model):
    """The event an ``await`` step waits for, and how it is correlated to the saga."""

    event: str = Field(min_length=1, max_length=255, pattern=EVENT_PATTERN)
    match: str = Field(min_length=1, max_length=1000)
    """A reference into the event (``${event.order_id}``): each event's correlation value."""
    equals: str = Field(min_length=1, max_length=1000)
    """A reference into ``input``, ``saga`` or earlier steps: this saga's value."""
    buffer: Duration = timedelta(minutes=10)
    """How long an event that no step awaits yet is kept for a step that starts later."""


class AwaitStep(_Model):
    """A step that sends nothing and waits for an event (SPEC §2.1)."""

    name: str = Field(pattern=NAME_PATTERN)
    when: Condition | None = _optional()
    awaits: AwaitSpec = Field(alias="await")
    timeout: Timeout | None = None
    """Without it, the step waits until the saga's deadline or a cancel."""
    pivot: bool = Field(default=False, strict=True)
    compensation: Compensation | None = None

    model_config = ConfigDict(serialize_by_alias=True)

    @model_validator(mode="after")
    def _compensation_names_participant(self) -> AwaitStep:
        if self.compensation is not None and self.compensation.participant is None:
            raise ValueError(
                "the compensation of an await step must name its participant "
                "(an await step has none of its own)"
            )
        return self


def _leaf_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "parallel" in value:
            return None
        return "await-step" if "await" in value or "awaits" in value else "command-step"
    return "await-step" if isinstance(value, AwaitStep) else "command-step"


def _item_kind(value: Any) -> str:
    if isinstance(value, Group) or (isinstance(value, dict) and "parallel" in value):
        return "parallel-group"
    return _leaf_kind(value) or "parallel-group"


BranchStep = Annotated[
    Annotated[Step, Tag("command-step")] | Annotated[AwaitStep, Tag("await-step")],
    Discriminator(
        _leaf_kind,
        custom_error_type="nested_group",
        custom_error_message="groups do not nest: a branch holds command and await steps only",
    ),
]


class Group(_Model):
    """A parallel group: every branch runs at once; the group ends when all have ended."""

    name: str = Field(pattern=NAME_PATTERN)
    when: Condition | None = _optional()
    parallel: dict[
        Annotated[str, Field(pattern=NAME_PATTERN)],
        Annotated[list[BranchStep], Field(min_length=1, max_length=100)],
    ] = Field(min_length=2, max_length=20)


STEP_KINDS: dict[str, type[BaseModel]] = {
    "command-step": Step,
    "await-step": AwaitStep,
    "parallel-group": Group,
}
"""The tag pydantic puts in an error's location for each kind of entry in ``steps``."""

StepItem = Annotated[
    Annotated[Step, Tag("command-step")]
    | Annotated[AwaitStep, Tag("await-step")]
    | Annotated[Group, Tag("parallel-group")],
    Discriminator(_item_kind),
]
AnyStep = Step | AwaitStep


@dataclass(frozen=True, slots=True)
class Leaf:
    """A command or await step, wherever it sits: at the top level or in a group's branch."""

    step: AnyStep
    index: int
    """Position among all leaves, in definition order (a saga's ``steps`` follow it)."""
    top: int
    """Position of the step, or of its group, in ``SagaDefinition.steps``."""
    group: str | None = None
    branch: str | None = None
    path: str = ""
    """Where it is written: ``steps[2]`` or ``steps[3].parallel.hotel[1]``."""


class SagaDefinition(_Model):
    """One YAML document: a named, versioned saga."""

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1, le=2**31 - 1, strict=True)
    description: str = Field(default="", max_length=10_000)
    trigger: Trigger | None = None
    timeout: Timeout | None = None
    defaults: Defaults = Defaults()
    steps: list[StepItem] = Field(min_length=1, max_length=100)

    @cached_property
    def leaves(self) -> tuple[Leaf, ...]:
        """Every command and await step, group branches in order, flattened."""
        found: list[Leaf] = []
        for top, item in enumerate(self.steps):
            if isinstance(item, Group):
                for branch, steps in item.parallel.items():
                    for position, step in enumerate(steps):
                        path = f"steps[{top}].parallel.{branch}[{position}]"
                        found.append(Leaf(step, len(found), top, item.name, branch, path))
            else:
                found.append(Leaf(item, len(found), top, path=f"steps[{top}]"))
        return tuple(found)

    @cached_property
    def branches(self) -> tuple[tuple[tuple[Leaf, ...], ...], ...]:
        """The leaves of each entry of ``steps``, by branch: a step is one branch of one
        leaf, a group has one branch per entry of its ``parallel``."""
        return tuple(
            tuple(tuple(branch) for _, branch in groupby(item, key=lambda leaf: leaf.branch))
            for _, item in groupby(self.leaves, key=lambda leaf: leaf.top)
        )

    @cached_property
    def conditions(self) -> dict[str, cel.Program]:
        """Each ``when``, compiled once, by the name of its step or group."""
        items: list[Step | AwaitStep | Group] = [*self.steps, *(leaf.step for leaf in self.leaves)]
        return {item.name: compile_condition(item.when) for item in items if item.when}

    def step(self, name: str) -> AnyStep:
        for leaf in self.leaves:
            if leaf.step.name == name:
                return leaf.step
        raise KeyError(name)

    @cached_property
    def awaited_events(self) -> frozenset[str]:
        """The event types its ``await`` steps wait for."""
        return frozenset(
            leaf.step.awaits.event for leaf in self.leaves if isinstance(leaf.step, AwaitStep)
        )

    def awaiting(self, event_type: str) -> list[AwaitStep]:
        """The await steps of this definition that wait for events of ``event_type``."""
        return [
            leaf.step
            for leaf in self.leaves
            if isinstance(leaf.step, AwaitStep) and leaf.step.awaits.event == event_type
        ]

    def step_timeout(self, step: Step) -> timedelta:
        """How long one attempt of a command step's action may take."""
        return step.timeout or self.defaults.timeout

    def step_retry(self, step: AnyStep) -> RetryPolicy:
        if isinstance(step, AwaitStep):
            return _NO_RETRY
        return step.retry or self.defaults.retry

    def compensation_timeout(self, step: AnyStep) -> timedelta:
        assert step.compensation is not None
        return step.compensation.timeout or self.defaults.timeout

    def compensation_retry(self, step: AnyStep) -> RetryPolicy:
        assert step.compensation is not None
        return step.compensation.retry or self.defaults.retry

    def compensation_participant(self, step: AnyStep) -> str:
        assert step.compensation is not None
        if step.compensation.participant is not None:
            return step.compensation.participant
        assert isinstance(step, Step)  # an await step's compensation names its own
        return step.participant


_NO_RETRY = RetryPolicy(max_attempts=1)
