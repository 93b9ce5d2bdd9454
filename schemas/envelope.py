"""The wire contract of SPEC §3: exchange names, headers and reply bodies.

Both the coordinator and the participant SDK build and read messages through these names
and models, so the two sides cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEFAULT_REPLY_TO",
    "HEADER_ATTEMPT",
    "HEADER_DEADLINE",
    "HEADER_IDEMPOTENCY_KEY",
    "HEADER_KIND",
    "HEADER_REJECTION",
    "HEADER_ROUTING_KEY",
    "HEADER_SAGA_ID",
    "HEADER_SAGA_NAME",
    "HEADER_SAGA_VERSION",
    "HEADER_STEP",
    "HEADER_TRACEPARENT",
    "HEADER_TRIES",
    "REPLY_COPIED_HEADERS",
    "Exchanges",
    "FailedReply",
    "Kind",
    "Reply",
    "ReplyError",
    "SucceededReply",
    "idempotency_key",
]

HEADER_SAGA_ID = "x-saga-id"
HEADER_SAGA_NAME = "x-saga-name"
HEADER_SAGA_VERSION = "x-saga-version"
HEADER_STEP = "x-saga-step"
HEADER_KIND = "x-saga-kind"
HEADER_ATTEMPT = "x-saga-attempt"
HEADER_IDEMPOTENCY_KEY = "x-idempotency-key"
HEADER_DEADLINE = "x-deadline"
HEADER_TRACEPARENT = "traceparent"
HEADER_REJECTION = "x-saga-rejection"
#: Times a consumer's handler failed on this message (a copy put back to its queue).
HEADER_TRIES = "x-saga-tries"
#: The routing key a message put back to its queue was first published with.
HEADER_ROUTING_KEY = "x-saga-routing-key"

#: Headers a participant copies from a command onto its reply.
REPLY_COPIED_HEADERS = (
    HEADER_SAGA_ID,
    HEADER_SAGA_NAME,
    HEADER_SAGA_VERSION,
    HEADER_STEP,
    HEADER_KIND,
    HEADER_ATTEMPT,
    HEADER_IDEMPOTENCY_KEY,
    HEADER_TRACEPARENT,
)

DEFAULT_REPLY_TO = "coordinator"

Kind = Literal["action", "compensation"]


def idempotency_key(saga_id: str, step: str, kind: Kind, retry: int = 0) -> str:
    """The key that is the same for every attempt of one step's action or compensation.

    After the n-th operator retry that resumed this step and kind, it is
    ``<saga>:<step>:<kind>:r<n>``, so that the participant runs it again.
    """
    base = f"{saga_id}:{step}:{kind}"
    return f"{base}:r{retry}" if retry else base


class Exchanges:
    """The four exchanges of SPEC §3, under a configurable prefix (default ``saga``)."""

    def __init__(self, prefix: str = "saga") -> None:
        self.prefix = prefix
        self.events = f"{prefix}.events"
        self.commands = f"{prefix}.commands"
        self.replies = f"{prefix}.replies"
        self.dead_letter = f"{prefix}.dead-letter"
        #: The events exchange's alternate exchange, and the queue that keeps what it gets.
        self.unrouted = f"{prefix}.unrouted"


class ReplyError(BaseModel):
    """Why a participant could not perform a command."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    code: str = Field(min_length=1, max_length=200)
    message: str = Field(default="", max_length=10_000)
    retryable: bool = False


class SucceededReply(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["succeeded"]
    output: dict[str, Any] = Field(default_factory=dict)


class FailedReply(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["failed"]
    error: ReplyError


#: A reply body; ``Reply.model_validate_json`` style parsing goes through ``ReplyAdapter``.
Reply = Annotated[SucceededReply | FailedReply, Field(discriminator="status")]
