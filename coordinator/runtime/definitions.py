"""The definitions a process runs: cached by (name, version), the latest ones refreshed.

Definitions are immutable per (name, version), so one read of each is enough. The latest
version of every name is reloaded by ``refresh`` (a background loop, and after each
registration or retirement). The binder then makes the broker's bindings exactly the
trigger events of the latest, not retired, definitions: it binds those, and unbinds every
other trigger event any stored version ever had (a definition that lost its trigger, or was
retired). A stored definition that fails to load is skipped by the store, never stopping
the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from coordinator.errors import UnknownDefinition
from coordinator.ports import SagaStore
from schemas.definition import SagaDefinition

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
        """Reload the latest definitions; bind exactly their trigger events, return them."""
        latest = await self._store.latest_definitions()
        for stored in latest:
            found = stored.definition
            self._definitions[(found.name, found.version)] = found
        self._latest = [stored.definition for stored in latest if not stored.retired]
        self._loaded_at = self._clock()
        events = {d.trigger.event for d in self._latest if d.trigger is not None}
        if self._binder is not None:
            await self._binder(events, await self._store.trigger_events())
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

    def stale(self, age: timedelta) -> bool:
        """Whether the latest definitions were loaded more than ``age`` ago (or never)."""
        return self._loaded_at is None or self._clock() - self._loaded_at > age
