"""The runtime's counters."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServiceStats"]


@dataclass(slots=True)
class ServiceStats:
    """Cheap counters, for logs, metrics and tests."""

    transitions: int = 0
    conflicts: int = 0
    published: int = 0
    relayed: int = 0
    timers_fired: int = 0
    outbox_cleared: int = 0
    outbox_flushes: int = 0
    events_matched: int = 0
    events_buffered: int = 0
    events_expired: int = 0
