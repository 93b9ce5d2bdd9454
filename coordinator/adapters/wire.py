"""The coordinator's messages on the wire (SPEC §3): events and replies in, commands out.

Bodies and headers are read by the codec the participant SDK uses too (``schemas.codec``);
this module adds what only the coordinator reads: an event's type, a reply's headers and
its succeeded/failed body. A breach raises ``BadMessage`` (``Undecodable`` is its old name)
with the reason for ``x-saga-rejection``. No aio-pika type goes past ``RawMessage``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode
from pydantic import TypeAdapter, ValidationError

from coordinator.engine.state import Command
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
from schemas.consuming import original_routing_key
from schemas.envelope import (
    HEADER_IDEMPOTENCY_KEY,
    HEADER_KIND,
    HEADER_SAGA_ID,
    HEADER_STEP,
    HEADER_TRACEPARENT,
    FailedReply,
    Kind,
    Reply,
    SucceededReply,
)

__all__ = [
    "IncomingEvent",
    "IncomingReply",
    "RawMessage",
    "Undecodable",
    "decode_event",
    "decode_reply",
    "encode_command",
]

Undecodable = BadMessage
_REPLY = TypeAdapter[SucceededReply | FailedReply](Reply)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """The parts of an AMQP delivery the codec reads: no aio-pika type past this point."""

    body: bytes
    routing_key: str
    headers: Mapping[str, Any]
    message_id: str | None = None
    correlation_id: str | None = None

    @classmethod
    def from_amqp(cls, message: AbstractIncomingMessage) -> RawMessage:
        return cls(
            body=message.body,
            routing_key=original_routing_key(message),
            headers=dict(message.headers or {}),
            message_id=message.message_id,
            correlation_id=message.correlation_id,
        )


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    event_type: str
    body: dict[str, Any]
    message_id: str | None
    traceparent: str | None


@dataclass(frozen=True, slots=True)
class IncomingReply:
    saga_id: str
    step: str
    kind: Kind
    attempt: int
    reply: SucceededReply | FailedReply
    message_id: str | None


def decode_event(
    raw: RawMessage, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH
) -> IncomingEvent:
    """An event: any JSON object; its type is the routing key."""
    body = decode_object(raw.body, Limits(max_bytes, max_depth))
    if not raw.routing_key:
        raise BadMessage("event without a routing key (the event type)", "missing_routing_key")
    return IncomingEvent(
        event_type=raw.routing_key,
        body=body,
        message_id=raw.message_id,
        traceparent=header_text(raw.headers.get(HEADER_TRACEPARENT)),
    )


def _required(raw: RawMessage, name: str) -> str:
    value = header_text(raw.headers.get(name))
    if not value:
        raise BadMessage(f"reply without the {name} header", "missing_header")
    return value


def decode_reply(
    raw: RawMessage, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH
) -> IncomingReply:
    """A reply: the contract headers of its command, and a succeeded/failed body."""
    body = decode_object(raw.body, Limits(max_bytes, max_depth))
    saga_id = _required(raw, HEADER_SAGA_ID)
    step = _required(raw, HEADER_STEP)
    kind = _required(raw, HEADER_KIND)
    if kind not in ("action", "compensation"):
        raise BadMessage(
            f"{HEADER_KIND} is {kind[:40]!r}; expected action or compensation", "bad_header"
        )
    try:
        attempt = attempt_header(raw.headers)
    except BadMessage as bad:
        raise BadMessage(f"reply {bad.reason}", bad.category) from None
    if raw.correlation_id and raw.correlation_id != saga_id:
        raise BadMessage(
            f"correlation_id {raw.correlation_id!r} differs from {HEADER_SAGA_ID} {saga_id!r}",
            "bad_header",
        )
    key = raw.headers.get(HEADER_IDEMPOTENCY_KEY)
    if key is not None:
        text = header_text(key)
        if text is None:
            raise BadMessage(f"{HEADER_IDEMPOTENCY_KEY} is not UTF-8 text", "bad_header")
        parse_idempotency_key(text, saga_id, step, cast(Kind, kind))
    status = body.get("status")
    if status not in ("succeeded", "failed"):
        shown = repr(status)[:60]
        raise BadMessage(
            f"unknown reply status {shown}; expected succeeded or failed", "unknown_status"
        )
    try:
        reply = _REPLY.validate_python(body)
    except ValidationError as exc:
        problems = "; ".join(
            # The first location is the discriminator (the status): leave it out.
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise BadMessage(f"invalid reply body: {problems}", "bad_body") from None
    return IncomingReply(
        saga_id=saga_id,
        step=step,
        kind=cast(Kind, kind),
        attempt=attempt,
        reply=reply,
        message_id=raw.message_id,
    )


def encode_command(command: Command) -> aio_pika.Message:
    """The AMQP message of SPEC §3 for one outbox command."""
    saga_id = str(command.headers.get(HEADER_SAGA_ID, ""))
    return aio_pika.Message(
        body=json.dumps(command.body, separators=(",", ":"), default=str).encode(),
        message_id=command.message_id,
        correlation_id=saga_id,
        type=command.type,
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
        reply_to=command.reply_to,
        timestamp=command.timestamp,
        headers=dict(command.headers),
    )
