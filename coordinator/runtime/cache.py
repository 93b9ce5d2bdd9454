"""The state cache: the states this process last saved, so a transition skips its read.

A cached state is only a guess: the save of a transition is conditional on the revision,
so a state another replica has since changed loses its save and the transition is
recomputed from a fresh read. The cache never decides anything a read would not have.
"""

from __future__ import annotations

from collections import OrderedDict

from coordinator.engine.state import SagaState

__all__ = ["StateCache"]


class StateCache:
    """An LRU of instance states; a finished saga is dropped instead of cached."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._states: OrderedDict[str, SagaState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, saga_id: str) -> SagaState | None:
        state = self._states.get(saga_id)
        if state is not None:
            self._states.move_to_end(saga_id)
        return state

    def remember(self, state: SagaState) -> None:
        """Cache the state just saved (never replacing a newer revision); evict the LRU.

        A finished saga (completed, compensated, or failed and waiting for an operator) is
        dropped instead: it rarely moves again, and a late reply or an operator can afford
        the read. So the cache holds the sagas in flight, not the history of the service.
        """
        if self._size <= 0:
            return
        if state.terminal or state.status == "failed":
            self._states.pop(state.id, None)
            return
        known = self._states.get(state.id)
        if known is not None and known.revision > state.revision:
            return  # a later transition of this process saved first
        self._states[state.id] = state
        self._states.move_to_end(state.id)
        while len(self._states) > self._size:
            self._states.popitem(last=False)

    def forget(self, saga_id: str) -> None:
        self._states.pop(saga_id, None)
