"""What the routes need from the rest of the coordinator, gathered in one object.

``install_rest_api`` stores an ``ApiContext`` on ``app.state``; every route reaches it through
``get_context``. The routes depend on Protocols only (``SagaStore``, ``SagaCommands``,
``SagaListing``), so tests can hand in any implementation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import Request

from coordinator.engine.messages import Transition
from coordinator.engine.state import SagaState
from coordinator.ports import SagaListing, SagaStore
from schemas.definition import SagaDefinition

if TYPE_CHECKING:
    from coordinator.api.auth import TokenTable

__all__ = [
    "STATE_KEY",
    "ApiContext",
    "DefinitionRegistered",
    "SagaCommands",
    "SagaListing",
    "get_context",
]

STATE_KEY = "saga_api"

DefinitionRegistered = Callable[[SagaDefinition], Awaitable[None]]
"""Called after every successful registration (new or identical), after
``SagaCommands.register_definition`` (which already binds trigger events): a hook for any
further work. It must be idempotent."""


class SagaCommands(Protocol):
    """The part of ``coordinator.service.SagaService`` the API calls."""

    async def register_definition(self, definition: SagaDefinition, source: str) -> str:
        """Store a definition (``created`` or ``identical``) and bind its trigger event;
        raises ``DefinitionConflict`` for the same version with other content."""
        ...

    async def retire_definition(self, name: str) -> None:
        """Retire every version of ``name`` (its trigger binding goes); raises
        ``UnknownDefinition`` when none is registered."""
        ...

    async def start_saga(
        self,
        definition_name: str,
        input: Any,
        *,
        version: int | None = None,
        key: str | None = None,
        source: str = "api",
        traceparent: str | None = None,
    ) -> tuple[SagaState, bool]:
        """Start an instance; returns it and whether it is new (False: the key was used).

        ``traceparent`` is the caller's W3C trace context; without a valid one the saga
        gets a fresh trace."""
        ...

    async def definition(self, name: str, version: int | None = None) -> SagaDefinition:
        """One definition (the latest when ``version`` is None)."""
        ...

    async def deliver_event(
        self, saga_id: str, event: str, body: dict[str, Any], message_id: str | None
    ) -> Transition:
        """Complete this saga's step waiting for ``event`` (``refused`` when none does, or
        the body does not match); raises ``SagaNotFound``."""
        ...

    async def cancel(self, saga_id: str, reason: str) -> Transition: ...

    async def retry(self, saga_id: str) -> Transition: ...


@dataclass(frozen=True, slots=True)
class ApiContext:
    store: SagaStore
    service: SagaCommands
    queries: SagaListing
    tokens: TokenTable
    on_definition_registered: DefinitionRegistered | None = None


def get_context(request: Request) -> ApiContext:
    context = getattr(request.app.state, STATE_KEY, None)
    if not isinstance(context, ApiContext):
        raise RuntimeError("the REST API is not installed: call install_rest_api(app, ...)")
    return context
