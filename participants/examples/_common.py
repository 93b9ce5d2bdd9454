"""Helpers shared by the example participants: input checks, delays, the runner."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from participants import Delivery, Participant, StepError

__all__ = ["Ledger", "amount", "delay_from", "main", "maybe_delay", "require", "undo_target"]

T = TypeVar("T")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SLOW = re.compile(r"slow(?::([\w.]+))?", re.IGNORECASE)

#: How long ``slow`` without a duration sleeps.
DEFAULT_SLOW_SECONDS = 5.0


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``500ms``, ``3s``, ``1m``.

    Raises:
        StepError: ``invalid_input`` when the text is not a duration.
    """
    match = _DURATION.match(text.strip())
    if match is None:
        raise StepError("invalid_input", f"{text!r} is not a duration such as 500ms, 3s, 1m")
    return float(match.group(1)) * _UNITS[match.group(2)]


def delay_from(text: str) -> float | None:
    """The delay a text asks for: ``slow`` → 5 s, ``slow:3s`` → 3 s, otherwise ``None``."""
    match = _SLOW.search(text)
    if match is None:
        return None
    return parse_duration(match.group(1)) if match.group(1) else DEFAULT_SLOW_SECONDS


def require(data: dict[str, Any], key: str, kind: type[T] | tuple[type, ...]) -> T:
    """``data[key]``, checked to be of ``kind``.

    Raises:
        StepError: ``invalid_input`` when it is missing or of another type.
    """
    value = data.get(key)
    if value is None or not isinstance(value, kind) or isinstance(value, bool):
        raise StepError("invalid_input", f"input field {key!r} is missing or not a {kind}")
    return value  # type: ignore[return-value]


def amount(value: Any) -> Decimal:
    """A positive amount of money from a JSON number or numeric string.

    Raises:
        StepError: ``invalid_input`` when it is not a number, ``invalid_amount`` when it is
            not positive.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise StepError("invalid_input", "input field 'amount' must be a number")
    try:
        parsed = Decimal(str(value))
    except InvalidOperation:
        raise StepError("invalid_input", f"amount {value!r} is not a number") from None
    if not parsed.is_finite() or parsed <= 0:
        raise StepError("invalid_amount", f"amount {value!r} must be positive")
    return parsed


def undo_target(data: dict[str, Any], key: str, delivery: Delivery) -> str:
    """What a compensation undoes: ``data[key]``, else the action's recorded output.

    The coordinator sends ``null`` for a timed-out action's output (it never saw it); this
    participant recorded it when it performed the action.

    Raises:
        StepError: ``invalid_input`` when neither has it.
    """
    value = data.get(key)
    if value is None and delivery.action_output is not None:
        value = delivery.action_output.get(key)
    if not isinstance(value, str):
        raise StepError("invalid_input", f"input field {key!r} is missing or not a string")
    return value


class Ledger:
    """What an example participant did and may undo, by id (its database, in a real
    service): ``add`` records an action's result under a new id; ``undo`` is the
    compensation handler that removes the entry its input (or the action's output) names.
    """

    def __init__(self, prefix: str, key: str, undone: str) -> None:
        """Ids look like ``<prefix>-<12 hex digits>`` and travel in the field ``key``;
        ``undo`` answers ``{key: id, undone: whether there was such an entry}``."""
        self.prefix, self.key, self.undone = prefix, key, undone
        self.entries: dict[str, Any] = {}

    def add(self, value: Any) -> dict[str, Any]:
        """Record ``value`` under a new id; the action's output ``{key: id}``."""
        entry_id = f"{self.prefix}-{uuid.uuid4().hex[:12]}"
        self.entries[entry_id] = value
        return {self.key: entry_id}

    async def undo(self, input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        await maybe_delay(input)
        target = undo_target(input, self.key, delivery)
        return {self.key: target, self.undone: self.entries.pop(target, None) is not None}


async def maybe_delay(data: dict[str, Any]) -> None:
    """Sleep for the optional ``_delay`` input field (a duration)."""
    delay = data.get("_delay")
    if isinstance(delay, str):
        await asyncio.sleep(parse_duration(delay))


def main(build: Callable[..., Participant]) -> None:
    """Run the participant built by ``build()`` from the environment until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(build().run())
