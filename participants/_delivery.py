"""Decoding a command (pure): AMQP properties and body in, a ``Command`` or ``BadCommand`` out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.codec import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DEPTH,
    BadMessage,
    Limits,
    attempt_header,
    decode_object,
    header_text,
    parse_idempotency_key,
)
from schemas.envelope import (
    DEFAULT_REPLY_TO,
    HEADER_ATTEMPT,
    HEADER_DEADLINE,
    HEADER_IDEMPOTENCY_KEY,
    HEADER_KIND,
    HEADER_SAGA_ID,
    HEADER_STEP,
    Kind,
    idempotency_key,
)

__all__ = ["MAX_BODY_BYTES", "MAX_DEPTH", "BadCommand", "Command", "Delivery", "decode_command"]

#: The size limit of a command body (SPEC §3).
MAX_BODY_BYTES = DEFAULT_MAX_BYTES
#: The nesting limit of a command body (SPEC §3).
MAX_DEPTH = DEFAULT_MAX_DEPTH

_REQUIRED = (HEADER_SAGA_ID, HEADER_STEP, HEADER_KIND, HEADER_ATTEMPT, HEADER_IDEMPOTENCY_KEY)


class BadCommand(BadMessage):
    """A message that breaks the contract; it is dead-lettered, never retried.

    Args:
        reason: Why, as put in the ``x-saga-rejection`` header.
        category: A fixed word for the kind of breach.
    """

    def __init__(self, reason: str, category: str = "bad_header") -> None:
        super().__init__(reason, category)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a handler knows about the command it is handling.

    Attributes:
        saga_id: The saga instance id.
        step: The step name.
        kind: ``action`` or ``compensation``.
        attempt: 1, 2, … for this step and kind.
        idempotency_key: The same for every attempt of this step and kind;
            ``<saga>:<step>:<kind>:r<n>`` after the n-th operator retry (a new request).
        deadline: When the coordinator stops waiting, if it said so.
        headers: All the command's headers, as received (byte strings decoded).
        command: The command name.
        message_id: The command's AMQP message id, if any.
        action_output: For a compensation: the output this participant recorded when it
            performed the action. The coordinator sends ``null`` for references to an
            action's output when that action timed out (its outcome unknown to it), so a
            compensation handler falls back on this to find what to undo.
    """

    saga_id: str
    step: str
    kind: Kind
    attempt: int
    idempotency_key: str
    deadline: datetime | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    command: str = ""
    message_id: str | None = None
    action_output: Mapping[str, Any] | None = None

    @property
    def action_key(self) -> str:
        """The idempotency key of this step's action (what a compensation undoes)."""
        return idempotency_key(self.saga_id, self.step, "action")


@dataclass(frozen=True, slots=True)
class Command:
    """A decoded command: its context, input, and where to reply."""

    delivery: Delivery
    input: dict[str, Any]
    reply_to: str


def _required_text(headers: Mapping[str, Any], name: str) -> str:
    value = headers.get(name)
    if not isinstance(value, str) or not value:
        raise BadCommand(f"header {name} must be a non-empty string")
    return value


def _deadline(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise BadCommand(f"header {HEADER_DEADLINE} is not an ISO-8601 instant") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def decode_command(
    *,
    body: bytes,
    headers: Mapping[str, Any] | None,
    message_type: str | None,
    routing_key: str | None,
    reply_to: str | None,
    message_id: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_depth: int = MAX_DEPTH,
) -> Command:
    """Decode one command message according to SPEC §3.

    Args:
        body: The raw body.
        headers: The AMQP headers.
        message_type: The AMQP ``type`` property (the command name).
        routing_key: The routing key, ``<participant>.<command>``; its suffix names the
            command when ``type`` is missing.
        reply_to: The AMQP ``reply_to`` property.
        message_id: The AMQP ``message_id`` property.
        max_body_bytes: The body size limit.
        max_depth: The body nesting limit.

    Returns:
        The decoded command.

    Raises:
        BadCommand: The message breaks the contract.
    """
    decoded = {str(k): (header_text(v) or v) for k, v in (headers or {}).items()}
    missing = [name for name in _REQUIRED if decoded.get(name) in (None, "")]
    if missing:
        raise BadCommand(f"missing headers: {', '.join(missing)}", "missing_header")
    kind = decoded[HEADER_KIND]
    if kind not in ("action", "compensation"):
        shown = repr(kind)[:40]
        raise BadCommand(f"header {HEADER_KIND} must be 'action' or 'compensation', got {shown}")
    try:
        payload = decode_object(body, Limits(max_body_bytes, max_depth))
        attempt = attempt_header(decoded)
    except BadMessage as bad:
        raise BadCommand(bad.reason, bad.category) from None
    saga_id = _required_text(decoded, HEADER_SAGA_ID)
    step = _required_text(decoded, HEADER_STEP)
    key = _required_text(decoded, HEADER_IDEMPOTENCY_KEY)
    try:
        parse_idempotency_key(key, saga_id, step, "action" if kind == "action" else "compensation")
    except BadMessage as bad:
        raise BadCommand(bad.reason, bad.category) from None
    command = message_type or ""
    if not command and routing_key:
        command = routing_key.split(".", 1)[-1]
    if not command:
        raise BadCommand("the command name is missing (no type property and no routing key)")
    delivery = Delivery(
        saga_id=saga_id,
        step=step,
        kind="action" if kind == "action" else "compensation",
        attempt=attempt,
        idempotency_key=key,
        deadline=_deadline(decoded.get(HEADER_DEADLINE)),
        headers=decoded,
        command=command,
        message_id=message_id,
    )
    return Command(delivery=delivery, input=payload, reply_to=reply_to or DEFAULT_REPLY_TO)
