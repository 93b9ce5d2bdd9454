"""W3C trace context: checking an incoming ``traceparent`` and making a fresh one.

The coordinator makes no spans. It carries the ``traceparent`` of the message or HTTP call
that started a saga to every command of that saga (the engine copies it from the
instance), and participants copy it to their replies, so one trace id ties together
everything a saga did. A saga started without a valid ``traceparent`` gets a fresh one
here, at the edge: the engine stays free of randomness.

Format (version 00): ``00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>``, lower
case, with neither id all zeros.
"""

from __future__ import annotations

import re
import secrets

__all__ = ["new_traceparent", "valid_traceparent"]

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def valid_traceparent(value: str | None) -> str | None:
    """``value`` stripped when it is a usable ``traceparent``, else None.

    Versions other than 00 are accepted as the W3C recommendation says (a future version
    may append fields after the flags), except the forbidden version ``ff``.
    """
    if value is None:
        return None
    text = value.strip()
    match = _TRACEPARENT.match(text)
    if match is None:
        return None
    version, trace_id, parent_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return text


def new_traceparent() -> str:
    """A fresh sampled ``traceparent``: random trace id and parent id."""
    while True:
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        if trace_id != "0" * 32 and parent_id != "0" * 16:
            return f"00-{trace_id}-{parent_id}-01"
