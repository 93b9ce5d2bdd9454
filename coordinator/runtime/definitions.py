"""The definitions a process runs: cached by (name, version), the latest ones refreshed.

Definitions are immutable per (name, version), so one read of each is enough. The latest
version of every name is reloaded by ``refresh`` (a background loop, and after each
registration or retirement), and so is every stored version that has an ``await`` step,
retired or not: a running saga of any of them may be waiting. The binder then makes the
broker's bindings exactly the trigger events of the latest, not retired, definitions plus
the event types any of those versions awaits: it binds those, and unbinds every other
event type any stored version ever triggered or awaited (a definition that lost its
trigger, or was retired). A stored definition that fails to load is skipped by the store,
never stopping the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from coordinator.errors import UnknownDefinition
from coordinator.ports import SagaStore
from schemas.definition import AwaitStep, SagaDefinition

__all__ = ["DefinitionCatalog", "TriggerBinder"]

TriggerBinder = Callable[[set[str], set[str]], Awaitable[None]]
"""``binder(wanted, known)``: bind exactly ``wanted``; unbind the rest of ``known``."""


class DefinitionCatalog:
    """Reads definitions through the store, caches them and keeps the triggers bound."""

    def __init__(
        self,
        store: SagaStore,
        *,
        clock: Callable[[], datetime],
        binder: TriggerBinder | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._binder = binder
        self._definitions: dict[tuple[str, int], SagaDefinition] = {}
        self._latest: list[SagaDefinition] = []
        self._awaiting: list[SagaDefinition] = []
        """Every stored version with an ``await`` step (retired ones too)."""
        self._loaded_at: datetime | None = None

    async def get(self, name: str, version: int | None = None) -> SagaDefinition:
        """One definition (the latest when ``version`` is None); cached, they never change."""
        if version is not None and (cached := self._definitions.get((name, version))):
            return cached
        stored = await self._store.get_definition(name, version)
        if stored is None:
            raise UnknownDefinition(name, version)
        found = stored.definition
        self._definitions[(found.name, found.version)] = found
        return found

    async def refresh(self) -> set[str]:
        """Reload the latest definitions and the versions that await events; bind exactly
        the event types they trigger or await, and return them."""
        latest = await self._store.latest_definitions()
        awaiting = await self._store.awaiting_definitions()
        for stored in [*latest, *awaiting]:
            found = stored.definition
            self._definitions[(found.name, found.version)] = found
        self._latest = [stored.definition for stored in latest if not stored.retired]
        self._awaiting = [stored.definition for stored in awaiting]
        self._loaded_at = self._clock()
        awaited = {event for d in self._awaiting for event in d.awaited_events}
        events = {d.trigger.event for d in self._latest if d.trigger is not None} | awaited
        if self._binder is not None:
            await self._binder(events, await self._store.trigger_events() | awaited)
        return events

    async def register(self, definition: SagaDefinition, source: str) -> str:
        """Store a definition (``created`` or ``identical``) and bind its trigger."""
        outcome = await self._store.register_definition(definition, source)
        await self.refresh()
        return outcome

    async def retire(self, name: str) -> None:
        """Retire every version of ``name``: its trigger starts no saga (the binding goes);
        running sagas go on; registering a new version makes the name active again."""
        if not await self._store.retire_definition(name):
            raise UnknownDefinition(name)
        await self.refresh()

    def triggered_by(self, event_type: str) -> list[SagaDefinition]:
        """The latest definitions that ``event_type`` starts."""
        return [d for d in self._latest if d.trigger is not None and d.trigger.event == event_type]

    def awaiting(self, event_type: str) -> list[tuple[SagaDefinition, AwaitStep]]:
        """Every (definition version, step) that waits for events of ``event_type``."""
        return [(d, step) for d in self._awaiting for step in d.awaiting(event_type)]

    def longest_buffer(self) -> timedelta | None:
        """The longest ``await.buffer`` of every version that awaits events (None: none)."""
        return max(
            (
                leaf.step.awaits.buffer
                for d in self._awaiting
                for leaf in d.leaves
                if isinstance(leaf.step, AwaitStep)
            ),
            default=None,
        )

    def stale(self, age: timedelta) -> bool:
        """Whether the latest definitions were loaded more than ``age`` ago (or never)."""
        return self._loaded_at is None or self._clock() - self._loaded_at > age
