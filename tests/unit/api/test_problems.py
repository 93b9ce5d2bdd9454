"""Error mapping of the coordinator's own errors, with doubles: HTTP shape only.

The real service and store are exercised in ``tests/integration/test_api.py``; here a
service double raises each error so that its status and problem document can be checked.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from coordinator.adapters.memory import InMemorySagaStore
from coordinator.api.auth import parse_api_tokens
from coordinator.api.context import ApiContext
from coordinator.api.v1 import install_rest_api
from coordinator.engine.messages import Transition
from coordinator.engine.state import SagaState
from coordinator.errors import (
    BrokerUnavailable,
    InvalidTransition,
    SagaError,
    SagaNotFound,
    StoreUnavailable,
    UnstorableData,
)
from coordinator.ports import SagaListPage
from coordinator.service import SagaBusy
from schemas.definition import SagaDefinition


class Raising:
    """Every call raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def register_definition(self, definition: SagaDefinition, source: str) -> str:
        raise self.error

    async def retire_definition(self, name: str) -> None:
        raise self.error

    async def start_saga(
        self, definition_name: str, input: Any, **_: Any
    ) -> tuple[SagaState, bool]:
        raise self.error

    async def cancel(self, saga_id: str, reason: str) -> Transition:
        raise self.error

    async def retry(self, saga_id: str) -> Transition:
        raise self.error

    async def list_sagas(self, **_: Any) -> SagaListPage:
        raise self.error


def app_with(error: Exception) -> FastAPI:
    app = FastAPI()
    raising = Raising(error)
    context = ApiContext(
        store=InMemorySagaStore(),
        service=raising,
        queries=raising,
        tokens=parse_api_tokens(None),
    )
    install_rest_api(app, context)
    return app


async def call(error: Exception, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app_with(error), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        return await client.request(method, path, **kwargs)


@pytest.mark.parametrize(
    ("error", "status", "slug"),
    [
        (SagaNotFound("s-1"), 404, "saga-not-found"),
        (StoreUnavailable("MongoDB failed: secret-host:27017"), 503, "unavailable"),
        (BrokerUnavailable("down"), 503, "unavailable"),
        (SagaBusy("s-1", 20), 503, "busy"),
        (UnstorableData("cannot store saga: the data cannot be stored"), 422, "unstorable"),
        (InvalidTransition("engine bug with internals"), 500, "internal"),
        (SagaError("unclassified"), 500, "internal"),
    ],
)
async def test_saga_errors_map_to_problems(error: Exception, status: int, slug: str) -> None:
    response = await call(error, "POST", "/v1/sagas/s-1/retry")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == f"urn:saga-coordinator:problem:{slug}"
    assert problem["instance"] == "/v1/sagas/s-1/retry"
    if status == 503:
        assert response.headers["retry-after"] == "1"
    assert "secret-host" not in problem["detail"] and "internals" not in problem["detail"]


async def test_unexpected_exception_is_a_bare_500() -> None:
    response = await call(RuntimeError("password=hunter2"), "GET", "/v1/sagas")
    assert response.status_code == 500
    assert "hunter2" not in response.text


async def test_trigger_binding_failure_after_storing_is_503() -> None:
    yaml = b"name: a\nversion: 1\nsteps:\n  - {name: s, participant: p, command: c}\n"

    class StoresThenFails(Raising):
        def __init__(self, store: InMemorySagaStore) -> None:
            super().__init__(BrokerUnavailable("no broker"))
            self.store = store

        async def register_definition(self, definition: SagaDefinition, source: str) -> str:
            await self.store.register_definition(definition, source)
            raise self.error

    store = InMemorySagaStore()
    service = StoresThenFails(store)
    app = FastAPI()
    install_rest_api(
        app,
        ApiContext(store=store, service=service, queries=service, tokens=parse_api_tokens(None)),
    )
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.post(
            "/v1/definitions", content=yaml, headers={"content-type": "application/yaml"}
        )
    assert response.status_code == 503
    assert "send the same request again" in response.json()["detail"]
    assert await store.get_definition("a", 1) is not None
