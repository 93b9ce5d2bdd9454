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
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

from coordinator.adapters.mongo import (
    DEFAULT_MAX_SAGA_BYTES,
    as_stored,
    definition_hash,
    encode_saga,
    stored_datetime,
)
from coordinator.engine.state import SagaState
from coordinator.errors import DefinitionConflict
from coordinator.ports import DuplicateSaga, StoredDefinition
from schemas.definition import SagaDefinition

__all__ = ["InMemorySagaStore"]


class InMemorySagaStore:
    """``SagaStore`` over dicts; stores and returns copies, never the caller's objects."""

    def __init__(self, *, max_saga_bytes: int = DEFAULT_MAX_SAGA_BYTES) -> None:
        self.max_saga_bytes = max_saga_bytes
        self.definitions: dict[tuple[str, int], StoredDefinition] = {}
        self.sagas: dict[str, SagaState] = {}
        self._keys: dict[tuple[str, str], str] = {}

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
