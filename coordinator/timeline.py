"""A saga's timeline as text: one line per history entry, offset from the saga's start.

The demo and the terminal client (``saga-coordinator sagas show|history``) print it. It
reads the REST API's JSON shapes (``GET /v1/sagas/{id}`` and ``…/history``), so whoever
holds a ``SagaState`` turns it into that shape first (``saga_json``). A long note is
wrapped at word boundaries under its column, never cut.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

__all__ = ["entry_line", "entry_lines", "header_lines", "parse_time", "timeline"]

#: Column widths of an entry line: offset, event, where.
_EVENT = 29
_WHERE = 32
_INDENT = "    "
#: Notes wrap at word boundaries to keep lines within this width where they can.
_WIDTH = 120


def parse_time(value: str | datetime) -> datetime:
    """A JSON timestamp (ISO 8601, ``Z`` accepted) as a datetime."""
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def header_lines(saga: Mapping[str, Any]) -> list[str]:
    """The saga's definition, key, id, status and duration; its reason when it has one."""
    took = (parse_time(saga["updated_at"]) - parse_time(saga["created_at"])).total_seconds()
    lines = [
        f"  {saga['definition']} v{saga['version']}  key={saga.get('key')}  "
        f"saga={saga['id']}  → {saga['status']} in {took:.2f}s"
    ]
    reason = saga.get("reason")
    if isinstance(reason, Mapping):
        lines.append(f"  reason: {reason.get('code')}: {reason.get('message', '')}")
    return lines


def timeline(saga: Mapping[str, Any], history: Iterable[Mapping[str, Any]]) -> list[str]:
    """The header lines, then one line (or more, when its note wraps) per history entry."""
    return header_lines(saga) + entry_lines(saga, history)


def entry_lines(saga: Mapping[str, Any], history: Iterable[Mapping[str, Any]]) -> list[str]:
    """The lines of the history entries, their offsets from the saga's creation."""
    start = parse_time(saga["created_at"])
    return [line for entry in history for line in entry_line(start, entry)]


def entry_line(start: datetime, entry: Mapping[str, Any]) -> list[str]:
    """One history entry: ``+offset  event  step kind #attempt  note`` (note wrapped)."""
    offset = (parse_time(entry["at"]) - start).total_seconds()
    where = entry.get("step") or ""
    if entry.get("kind") is not None and entry.get("attempt") is not None:
        where += f" {entry['kind']} #{entry['attempt']}"
    head = f"{_INDENT}+{offset:6.2f}s  {entry['event']:<{_EVENT}} {where:<{_WHERE}} "
    note = _note(entry.get("detail") or {})
    if not note:
        return [head.rstrip()]
    column = len(head)  # a long step name pushes the note right; its lines follow it
    wrapped = textwrap.wrap(
        note, width=max(_WIDTH - column, 40), break_long_words=False, break_on_hyphens=False
    ) or [""]
    return [head + wrapped[0], *(" " * column + more for more in wrapped[1:])]


def _note(detail: Mapping[str, Any]) -> str:
    """The one detail of a history entry worth a reader's eye."""
    error = detail.get("error")
    if isinstance(error, Mapping):
        return f"{error.get('code')}: {error.get('message', '')}".rstrip(": ")
    if "delay_ms" in detail:
        return f"in {int(detail['delay_ms']) / 1000:.2f}s"
    if "reason" in detail:
        return str(detail["reason"])
    if "source" in detail:
        return str(detail["source"])
    if "event_type" in detail:  # an await step waits for, or receives, an event
        note = str(detail["event_type"])
        if "value" in detail:
            note += f" = {detail['value']}"
        if "message_id" in detail:
            note += f", message {detail['message_id']}"
        return note
    return ""
