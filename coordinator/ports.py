"""The ports between the service and its adapters, as Protocols.

``coordinator/adapters/mongo.py`` implements ``SagaStore``; ``coordinator/adapters/rabbit.py``
implements ``Publisher``; ``coordinator/adapters/queries.py`` implements ``SagaListing``. The
service and the REST API depend on these Protocols only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from coordinator.engine.state import Awaiting, Command, ErrorInfo, SagaState
from schemas.definition import SagaDefinition

__all__ = [
    "MAX_LIMIT",
    "BufferedEvent",
    "DuplicateSaga",
    "InvalidCursor",
    "Publisher",
    "SagaListPage",
    "SagaListing",
    "SagaRow",
    "SagaStore",
    "StoredDefinition",
    "WaitingSaga",
]

MAX_LIMIT = 500
"""The largest page ``SagaListing.list_sagas`` returns."""


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    definition: SagaDefinition
    source: str
    """The text it was registered from (YAML or JSON)."""
    content_hash: str
    registered_at: datetime
    retired: bool = False
    """Retired: its trigger starts no saga, until a new version of its name is registered."""


@dataclass(frozen=True, slots=True)
class BufferedEvent:
    """An awaited event kept for the steps that start waiting for it later (SPEC §2.1)."""

    id: str
    """``<event type>:<message_id>``: a redelivered event is stored once."""
    event_type: str
    body: dict[str, Any]
    message_id: str
    """The event's own ``message_id``, or one the coordinator made for it on arrival."""
    values: tuple[str | int | float, ...]
    """The correlation values it may match (``await.match`` resolved against its body)."""
    received_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class WaitingSaga:
    """A running saga with a step waiting for an event (what correlation reads of it)."""

    id: str
    definition: str
    definition_version: int
    awaiting: list[Awaiting]


class DuplicateSaga(Exception):
    """An instance already exists for this (definition name, business key)."""

    def __init__(self, existing: SagaState) -> None:
        self.existing = existing
        super().__init__(existing.id)


class SagaStore(Protocol):
    async def ensure_indexes(self) -> None: ...

    async def ping(self) -> None: ...

    # -- definitions -------------------------------------------------------------------
    async def register_definition(
        self, definition: SagaDefinition, source: str
    ) -> Literal["created", "identical"]:
        """Store a definition; raises ``DefinitionConflict`` for another content."""
        ...

    async def get_definition(
        self, name: str, version: int | None = None
    ) -> StoredDefinition | None:
        """One version, or the latest when ``version`` is None; raises
        ``DefinitionUnloadable`` when the stored document fails to load."""
        ...

    async def latest_definitions(self) -> list[StoredDefinition]:
        """The latest version of each name; one that fails to load is skipped (and logged)."""
        ...

    async def definition_versions(self, name: str) -> list[StoredDefinition]:
        """Every version of ``name`` that loads, oldest first."""
        ...

    async def retire_definition(self, name: str) -> bool:
        """Mark every version of ``name`` retired; False when no version exists."""
        ...

    async def trigger_events(self) -> set[str]:
        """The trigger event of every stored version, retired or not (to unbind)."""
        ...

    async def awaiting_definitions(self) -> list[StoredDefinition]:
        """Every stored version, retired or not, that has an ``await`` step and loads."""
        ...

    # -- awaited events (``coordinator.runtime.events``) ------------------------------
    async def waiting_sagas(
        self, event_type: str, values: Sequence[str | int | float], after: str | None, limit: int
    ) -> list[WaitingSaga]:
        """Running sagas with a step waiting for ``event_type`` and one of ``values``, by
        id after ``after``: through the ``awaiting`` index, never a scan."""
        ...

    async def buffer_event(self, event: BufferedEvent) -> bool:
        """Keep ``event`` until its ``expires_at``; False when its id is already kept."""
        ...

    async def buffered_events(
        self, event_type: str, value: str | int | float, now: datetime, limit: int
    ) -> list[BufferedEvent]:
        """Kept events of ``event_type`` carrying ``value``, not expired, oldest first."""
        ...

    async def event_matched(self, event_id: str) -> None:
        """Note that a kept event completed a step (it is then never counted expired)."""
        ...

    async def expire_events(self, now: datetime) -> int:
        """Mark the kept events whose time has passed without completing any step; return
        how many this call marked (each is marked once, whoever calls)."""
        ...

    async def recently_waiting(
        self, since: datetime, after: str | None, limit: int
    ) -> list[WaitingSaga]:
        """Running sagas with a step that started waiting at or after ``since``, by id
        after ``after``."""
        ...

    # -- instances ---------------------------------------------------------------------
    async def insert_saga(self, state: SagaState) -> None:
        """Insert a new instance; raises ``DuplicateSaga`` when its key is taken."""
        ...

    async def load_saga(self, saga_id: str) -> SagaState | None: ...

    async def find_saga(self, definition: str, key: str) -> SagaState | None:
        """The instance of ``definition`` for business key ``key``, if any."""
        ...

    async def save_saga(
        self, state: SagaState, expected_revision: int, base: SagaState | None = None
    ) -> bool:
        """Store ``state`` if the instance's stored revision is still ``expected_revision``.

        ``base``, if given, is the state stored at ``expected_revision`` that ``state`` was
        computed from; a store may then write only what changed. Returns False (and writes
        nothing) when another writer got there first.
        """
        ...

    async def claim_due(self, now: datetime, lease: timedelta, limit: int) -> list[SagaState]:
        """Instances whose ``wake_at`` has come; each claimed by pushing its ``wake_at``
        to ``now + lease`` so that other replicas skip it meanwhile."""
        ...

    async def unpublished(self, older_than: datetime, limit: int) -> list[SagaState]:
        """Instances with outbox entries last changed before ``older_than``."""
        ...

    async def clear_outbox(self, published: Sequence[tuple[str, str]]) -> None:
        """Remove published ``(saga_id, message_id)`` entries, in one round trip."""
        ...


class Publisher(Protocol):
    async def publish_commands(self, commands: Sequence[Command]) -> None:
        """Publish with confirms; returns once the broker has confirmed every one."""
        ...


# -- the read side ------------------------------------------------------------------------
class InvalidCursor(ValueError):
    """The ``cursor`` a client sent was not made by the listing."""


@dataclass(frozen=True, slots=True)
class SagaRow:
    """One saga as listed: everything but its input, steps and history."""

    id: str
    definition: str
    definition_version: int
    key: str | None
    status: str
    reason: ErrorInfo | None
    deadline: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SagaListPage:
    items: list[SagaRow]
    next_cursor: str | None


class SagaListing(Protocol):
    """Listing sagas, newest first, with an opaque cursor."""

    async def list_sagas(
        self,
        *,
        definition: str | None = None,
        status: str | None = None,
        key: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SagaListPage:
        """One page; raises ``InvalidCursor`` for a cursor it did not make."""
        ...
