"""``InMemorySagaStore``: the ``SagaStore`` port over dicts, for unit tests of the service.

It keeps the semantics of ``MongoSagaStore`` that callers rely on, and the contract tests in
``tests/contract/`` run the same bodies against both: definitions immutable by content hash,
one instance per (definition, key), revision-checked saves, the timer lease of
``claim_due``, outbox clearing without a revision change, and datetimes given back at BSON
precision (UTC-aware, milliseconds; see ``as_stored``), and a saga MongoDB would refuse
(``encode_saga``: unencodable, or over the size budget) raises ``UnstorableData``. No method
awaits anything, so each one is atomic with respect to other tasks, as each MongoDB
document update is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import bson

from coordinator.adapters.mongo import (
    DEFAULT_MAX_SAGA_BYTES,
    as_stored,
    definition_hash,
    encode_saga,
    stored_datetime,
)
from coordinator.adapters.mongo_errors import translate_errors
from coordinator.engine.flow import same_value
from coordinator.engine.state import SagaState
from coordinator.errors import DefinitionConflict
from coordinator.ports import BufferedEvent, DuplicateSaga, StoredDefinition, WaitingSaga
from schemas.definition import SagaDefinition

__all__ = ["InMemorySagaStore"]


class InMemorySagaStore:
    """``SagaStore`` over dicts; stores and returns copies, never the caller's objects."""

    def __init__(self, *, max_saga_bytes: int = DEFAULT_MAX_SAGA_BYTES) -> None:
        self.max_saga_bytes = max_saga_bytes
        self.definitions: dict[tuple[str, int], StoredDefinition] = {}
        self.sagas: dict[str, SagaState] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self.events: dict[str, tuple[BufferedEvent, str]] = {}
        """Kept events by id, with their state (``buffered``, ``matched``, ``expired``)."""

    async def ensure_indexes(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    # -- definitions ------------------------------------------------------------------
    async def register_definition(
        self, definition: SagaDefinition, source: str
    ) -> Literal["created", "identical"]:
        content_hash = definition_hash(definition)
        key = (definition.name, definition.version)
        existing = self.definitions.get(key)
        if existing is None:
            self.definitions[key] = StoredDefinition(
                definition=definition,
                source=source,
                content_hash=content_hash,
                registered_at=stored_datetime(datetime.now(UTC)),
            )
            return "created"
        if existing.content_hash != content_hash:
            raise DefinitionConflict(definition.name, definition.version)
        return "identical"

    async def get_definition(
        self, name: str, version: int | None = None
    ) -> StoredDefinition | None:
        if version is not None:
            return self.definitions.get((name, version))
        versions = await self.definition_versions(name)
        return versions[-1] if versions else None

    async def latest_definitions(self) -> list[StoredDefinition]:
        latest: dict[str, StoredDefinition] = {}
        for (name, _), stored in sorted(self.definitions.items()):
            latest[name] = stored
        return [latest[name] for name in sorted(latest)]

    async def definition_versions(self, name: str) -> list[StoredDefinition]:
        return [
            stored
            for (stored_name, _), stored in sorted(self.definitions.items())
            if stored_name == name
        ]

    async def retire_definition(self, name: str) -> bool:
        found = False
        for key, stored in list(self.definitions.items()):
            if key[0] == name:
                self.definitions[key] = dataclasses.replace(stored, retired=True)
                found = True
        return found

    async def trigger_events(self) -> set[str]:
        return {
            stored.definition.trigger.event
            for stored in self.definitions.values()
            if stored.definition.trigger is not None
        }

    async def awaiting_definitions(self) -> list[StoredDefinition]:
        return [
            stored
            for _, stored in sorted(self.definitions.items())
            if stored.definition.awaited_events
        ]

    # -- awaited events -----------------------------------------------------------------
    def _waiting(
        self, matches: Callable[[SagaState], bool], after: str | None, limit: int
    ) -> list[WaitingSaga]:
        found = sorted(
            (s for s in self.sagas.values() if s.status == "running" and s.awaiting and matches(s)),
            key=lambda s: s.id,
        )
        return [
            WaitingSaga(s.id, s.definition, s.definition_version, list(s.awaiting))
            for s in found
            if after is None or s.id > after
        ][: max(limit, 0)]

    async def waiting_sagas(
        self, event_type: str, values: Sequence[str | int | float], after: str | None, limit: int
    ) -> list[WaitingSaga]:
        def matches(state: SagaState) -> bool:
            return any(
                entry.event == event_type and any(same_value(entry.value, v) for v in values)
                for entry in state.awaiting
            )

        return self._waiting(matches, after, limit)

    async def recently_waiting(
        self, since: datetime, after: str | None, limit: int
    ) -> list[WaitingSaga]:
        since = stored_datetime(since)
        return self._waiting(
            lambda state: any(entry.since >= since for entry in state.awaiting), after, limit
        )

    async def buffer_event(self, event: BufferedEvent) -> bool:
        if event.id in self.events:
            return False
        with translate_errors("keep an awaited event"):
            bson.encode({"body": event.body})  # what MongoDB would refuse
        kept = dataclasses.replace(
            event,
            received_at=stored_datetime(event.received_at),
            expires_at=stored_datetime(event.expires_at),
        )
        self.events[event.id] = (kept, "buffered")
        return True

    async def buffered_events(
        self, event_type: str, value: str | int | float, now: datetime, limit: int
    ) -> list[BufferedEvent]:
        found = [
            event
            for event, _ in self.events.values()
            if event.event_type == event_type
            and event.expires_at > now
            and any(same_value(value, v) for v in event.values)
        ]
        found.sort(key=lambda event: event.received_at)
        return found[: max(limit, 0)]

    async def event_matched(self, event_id: str) -> None:
        kept = self.events.get(event_id)
        if kept is not None and kept[1] == "buffered":
            self.events[event_id] = (kept[0], "matched")

    async def expire_events(self, now: datetime) -> int:
        expired = [
            event_id
            for event_id, (event, state) in self.events.items()
            if state == "buffered" and event.expires_at <= now
        ]
        for event_id in expired:
            self.events[event_id] = (self.events[event_id][0], "expired")
        return len(expired)

    # -- instances ----------------------------------------------------------------------
    async def insert_saga(self, state: SagaState) -> None:
        encode_saga(state.to_document(), self.max_saga_bytes)  # what MongoDB would refuse
        taken = None
        if state.key is not None:
            taken = self._keys.get((state.definition, state.key))
        if taken is None and state.id in self.sagas:
            taken = state.id
        if taken is not None:
            raise DuplicateSaga(self.sagas[taken].model_copy(deep=True))
        self.sagas[state.id] = as_stored(state)
        if state.key is not None:
            self._keys[(state.definition, state.key)] = state.id

    async def load_saga(self, saga_id: str) -> SagaState | None:
        stored = self.sagas.get(saga_id)
        return None if stored is None else stored.model_copy(deep=True)

    async def find_saga(self, definition: str, key: str) -> SagaState | None:
        for stored in self.sagas.values():
            if stored.definition == definition and stored.key == key:
                return stored.model_copy(deep=True)
        return None

    async def save_saga(
        self, state: SagaState, expected_revision: int, base: SagaState | None = None
    ) -> bool:
        stored = self.sagas.get(state.id)
        if stored is None or stored.revision != expected_revision:
            return False
        encode_saga(state.to_document(), self.max_saga_bytes)  # what MongoDB would refuse
        self.sagas[state.id] = as_stored(state)
        return True

    async def claim_due(self, now: datetime, lease: timedelta, limit: int) -> list[SagaState]:
        now = stored_datetime(now)
        due = sorted(
            (s for s in self.sagas.values() if s.wake_at is not None and s.wake_at <= now),
            key=lambda s: (s.wake_at, s.id),
        )[: max(limit, 0)]
        claimed = []
        for stored in due:
            stored.wake_at = stored_datetime(now + lease)
            claimed.append(stored.model_copy(deep=True))
        return claimed

    async def unpublished(self, older_than: datetime, limit: int) -> list[SagaState]:
        older_than = stored_datetime(older_than)
        found = sorted(
            (s for s in self.sagas.values() if s.outbox and s.updated_at < older_than),
            key=lambda s: (s.updated_at, s.id),
        )[: max(limit, 0)]
        return [stored.model_copy(deep=True) for stored in found]

    async def clear_outbox(self, published: Sequence[tuple[str, str]]) -> None:
        for saga_id, message_id in published:
            stored = self.sagas.get(saga_id)
            if stored is not None:
                stored.outbox = [c for c in stored.outbox if c.message_id != message_id]
