"""Reply bodies, and whether a handler's output can be replied and stored (pure).

A handler's output travels twice: in the reply, which the coordinator decodes with the
codec every message goes through (``schemas.codec``: size, nesting, ``NaN``, integers
beyond 64 bits, lone surrogates), and in the idempotency record, which MongoDB must accept
(no NUL in a key, integers of at most 8 bytes, at most 16 MiB). An output that fails either
is the handler's bug, and the same output would come back on every retry, so it becomes a
final, non-retryable failure ``invalid_output`` naming the problem. The handler has run,
though: its record remembers that the action was performed (``performed``), so that a
compensation sent for it (a step whose reply got lost, say) calls the compensation handler.
"""

from __future__ import annotations

import json
from typing import Any

import bson

from schemas.codec import BadMessage, Limits, decode_object
from schemas.envelope import ReplyError
from schemas.storable import UNSTORABLE_ERRORS

__all__ = [
    "INVALID_OUTPUT",
    "encode_reply",
    "failed",
    "invalid_output",
    "output_problem",
    "performed",
    "succeeded",
]

#: The error code of an output that cannot be replied or stored.
INVALID_OUTPUT = "invalid_output"

_MAX_MESSAGE = 1000


def succeeded(output: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``succeeded`` reply body."""
    return {"status": "succeeded", "output": output or {}}


def failed(error: ReplyError) -> dict[str, Any]:
    """A ``failed`` reply body."""
    return {"status": "failed", "error": error.model_dump()}


def invalid_output(problem: str) -> dict[str, Any]:
    """The final, non-retryable failure that replaces an output that cannot be kept."""
    message = f"the handler ran, but its output cannot be replied and stored: {problem}"
    return failed(ReplyError(code=INVALID_OUTPUT, message=message[:_MAX_MESSAGE]))


def performed(reply: dict[str, Any] | None) -> bool:
    """Whether a final reply means the action took effect (so it has something to undo)."""
    if reply is None:
        return False
    if reply.get("status") == "succeeded":
        return True
    error = reply.get("error")
    return isinstance(error, dict) and error.get("code") == INVALID_OUTPUT


def encode_reply(body: dict[str, Any]) -> bytes:
    """A reply body as it is published."""
    return json.dumps(body, separators=(",", ":")).encode()


def output_problem(output: Any, limits: Limits) -> str | None:
    """What is wrong with a handler's ``output`` (``None``: nothing).

    Args:
        output: What the handler returned (``None`` counts as ``{}``).
        limits: The size and nesting the coordinator accepts in a reply.
    """
    if output is None:
        return None
    if not isinstance(output, dict):
        return f"the handler returned {type(output).__name__}, not a dict"
    try:
        body = encode_reply(succeeded(output))
    except (TypeError, ValueError, RecursionError) as exc:
        return f"it is not JSON: {exc}"
    try:
        decode_object(body, limits)
    except BadMessage as bad:
        return f"the coordinator would refuse the reply: {bad.reason}"
    try:
        bson.encode({"output": output})
    except UNSTORABLE_ERRORS as exc:
        return f"MongoDB cannot store it: {exc}"
    return None
