"""The state cache: the states this process last saved, so a transition skips its read.

A cached state is only a guess: the save of a transition is conditional on the revision,
so a state another replica has since changed loses its save and the transition is
recomputed from a fresh read. The cache never decides anything a read would not have.

The cache is bounded by bytes, not by entries: a saga's size is the length of its JSON
form (a proxy: Python holds the parsed objects in a few times that). Entries are evicted
least recently used first; a state larger than the whole budget is not cached at all. So
large inputs make the cache hold fewer sagas, never more memory.
"""

from __future__ import annotations

from collections import OrderedDict

from coordinator.engine.state import SagaState

__all__ = ["DEFAULT_STATE_CACHE_BYTES", "StateCache", "state_size"]

DEFAULT_STATE_CACHE_BYTES = 64 * 1024 * 1024
"""64 MiB of states (as JSON) per process: thousands of typical sagas in flight."""


def state_size(state: SagaState) -> int:
    """The bytes ``state`` counts for against the budget: its JSON length."""
    return len(state.model_dump_json())


class StateCache:
    """An LRU of instance states within ``max_bytes``; a finished saga is dropped instead."""

    def __init__(self, max_bytes: int = DEFAULT_STATE_CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._states: OrderedDict[str, tuple[SagaState, int]] = OrderedDict()
        self.bytes = 0
        """The bytes the cached states count for now (at most ``max_bytes``)."""

    def __len__(self) -> int:
        return len(self._states)

    def get(self, saga_id: str) -> SagaState | None:
        entry = self._states.get(saga_id)
        if entry is None:
            return None
        self._states.move_to_end(saga_id)
        return entry[0]

    def remember(self, state: SagaState) -> None:
        """Cache the state just saved (never replacing a newer revision); evict the LRU.

        A finished saga (completed, compensated, or failed and waiting for an operator) is
        dropped instead: it rarely moves again, and a late reply or an operator can afford
        the read. So the cache holds the sagas in flight, not the history of the service.
        """
        if self._max_bytes <= 0:
            return
        known = self._states.get(state.id)
        if known is not None and known[0].revision > state.revision:
            return  # a later transition of this process saved first
        self.forget(state.id)
        if state.terminal or state.status == "failed":
            return
        size = state_size(state)
        if size > self._max_bytes:
            return
        self._states[state.id] = (state, size)
        self.bytes += size
        while self.bytes > self._max_bytes:
            _, (_, evicted) = self._states.popitem(last=False)
            self.bytes -= evicted

    def forget(self, saga_id: str) -> None:
        entry = self._states.pop(saga_id, None)
        if entry is not None:
            self.bytes -= entry[1]
