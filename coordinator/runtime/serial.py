"""One transition at a time per saga, inside one process.

Concurrent messages for one saga (a burst of duplicate replies, a reply racing a timer)
would otherwise all read the same revision and all but one lose their conditional save,
recompute, and lose again: a burst of n costs O(n²) work. Queued behind one lock per saga,
each reads the state the previous one saved (from the state cache) and wins at once, so a
burst costs about n single transitions, and other sagas are not held up by it.

Memory stays bounded: a saga's lock exists only while a transition holds it or waits for
it, so there are at most as many as there are transitions in flight.

Optimistic concurrency still guards against other replicas; this only removes the
conflicts a process would have with itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["PerKeyLock"]


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class PerKeyLock:
    """``async with locks.hold(key):`` — one holder per key at a time, FIFO."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        """Keys held or waited for right now."""
        return len(self._entries)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]
