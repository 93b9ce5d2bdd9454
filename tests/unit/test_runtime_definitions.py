"""The definitions a service runs: trigger bindings follow the latest, active definitions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from coordinator.adapters.memory import InMemorySagaStore
from coordinator.engine.engine import Options
from coordinator.errors import UnknownDefinition
from coordinator.service import SagaService
from schemas.definition import SagaDefinition
from tests.unit.test_runtime_service import RecordingPublisher


def order(version: int, trigger: str | None = "order.placed") -> SagaDefinition:
    raw: dict[str, object] = {
        "name": "order",
        "version": version,
        "steps": [{"name": "reserve", "participant": "a", "command": "reserve"}],
    }
    if trigger is not None:
        raw["trigger"] = {"event": trigger, "key": "${event.id}"}
    return SagaDefinition.model_validate(raw)


class Bindings:
    """A broker's bindings, synced the way ``RabbitBroker.bind_events`` does."""

    def __init__(self) -> None:
        self.bound: set[str] = set()

    async def sync(self, wanted: set[str], known: set[str]) -> None:
        self.bound = (self.bound - known) | wanted


async def make() -> tuple[SagaService, Bindings]:
    bindings = Bindings()
    service = SagaService(
        InMemorySagaStore(),
        RecordingPublisher(),
        options=Options(),
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        random=lambda: 0.5,
        new_id=lambda: "s-1",
        trigger_binder=bindings.sync,
    )
    return service, bindings


async def test_a_definition_that_loses_its_trigger_loses_its_binding() -> None:
    service, bindings = await make()
    await service.register_definition(order(1), "v1")
    assert bindings.bound == {"order.placed"}
    await service.register_definition(order(2, trigger="order.created"), "v2")
    assert bindings.bound == {"order.created"}
    await service.register_definition(order(3, trigger=None), "v3")
    assert bindings.bound == set()
    assert await service.on_event("order.created", {"id": 1}, None, None) == 0


async def test_retire_unbinds_and_a_new_version_binds_again() -> None:
    service, bindings = await make()
    await service.register_definition(order(1), "v1")
    await service.retire_definition("order")
    assert bindings.bound == set()
    assert await service.on_event("order.placed", {"id": 1}, None, None) == 0
    with pytest.raises(UnknownDefinition):
        await service.retire_definition("nothing")
    await service.register_definition(order(2), "v2")
    assert bindings.bound == {"order.placed"}
    assert await service.on_event("order.placed", {"id": 1}, None, None) == 1
