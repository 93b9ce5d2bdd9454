"""Pydantic models of the saga definition format (SPEC §2).

These models are the single source of the format: the loader validates YAML with them, the
engine reads them, and the JSON Schema in ``schemas/saga-definition.schema.json`` is
generated from them.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

__all__ = [
    "Compensation",
    "Defaults",
    "Duration",
    "RetryPolicy",
    "SagaDefinition",
    "Step",
    "Trigger",
    "format_duration",
    "parse_duration",
]

_DURATION_RE = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DURATION_PATTERN = r"^[0-9]+(ms|s|m|h|d)$"


def parse_duration(value: object) -> timedelta:
    """Parse ``500ms``, ``30s``, ``5m``, ``2h`` or ``1d`` into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"a duration is a string such as 500ms, 30s, 5m, 2h or 1d, not {value!r}")
    match = _DURATION_RE.match(value.strip())
    if match is None:
        raise ValueError(
            f"invalid duration {value!r}: use a whole number and one of ms, s, m, h, d "
            "(for example 500ms, 30s, 5m, 2h, 1d)"
        )
    return timedelta(milliseconds=int(match.group(1)) * _UNIT_MS[match.group(2)])


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


class RetryPolicy(_Model):
    """Exponential backoff, capped, with jitter."""

    max_attempts: int = Field(default=3, ge=1, le=1000, strict=True)
    backoff: Duration = timedelta(seconds=1)
    multiplier: float = Field(default=2.0, ge=1.0, le=100.0, strict=True)
    max_backoff: Duration = timedelta(minutes=1)

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
    """The command that undoes a step."""

    command: str = Field(pattern=WORD_PATTERN)
    input: Any = Field(default_factory=dict)
    timeout: Timeout | None = None
    retry: RetryPolicy | None = None


class Step(_Model):
    """One command to one participant, with its optional compensation."""

    name: str = Field(pattern=NAME_PATTERN)
    participant: str = Field(pattern=WORD_PATTERN)
    command: str = Field(pattern=WORD_PATTERN)
    input: Any = Field(default_factory=dict)
    timeout: Timeout | None = None
    retry: RetryPolicy | None = None
    pivot: bool = Field(default=False, strict=True)
    compensation: Compensation | None = None


class SagaDefinition(_Model):
    """One YAML document: a named, versioned saga."""

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1, strict=True)
    description: str = ""
    trigger: Trigger | None = None
    timeout: Timeout | None = None
    defaults: Defaults = Defaults()
    steps: list[Step] = Field(min_length=1, max_length=100)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def step_timeout(self, step: Step) -> timedelta:
        return step.timeout or self.defaults.timeout

    def step_retry(self, step: Step) -> RetryPolicy:
        return step.retry or self.defaults.retry

    def compensation_timeout(self, step: Step) -> timedelta:
        assert step.compensation is not None
        return step.compensation.timeout or self.defaults.timeout

    def compensation_retry(self, step: Step) -> RetryPolicy:
        assert step.compensation is not None
        return step.compensation.retry or self.defaults.retry
