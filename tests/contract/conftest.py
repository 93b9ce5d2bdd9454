"""The stores the contract tests run against: the in-memory double and MongoDB (a fresh
database per test, from the ``mongo`` and ``database_name`` fixtures of ``tests/conftest.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import AsyncMongoClient

from coordinator.adapters import InMemorySagaStore, MongoSagaStore
from coordinator.ports import SagaStore


@pytest.fixture(params=["memory", pytest.param("mongo", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> SagaStore:
    if request.param == "memory":
        return InMemorySagaStore()
    client: AsyncMongoClient[Any] = request.getfixturevalue("mongo")
    return MongoSagaStore(client, request.getfixturevalue("database_name"))


@pytest.fixture
async def store(backend: SagaStore) -> SagaStore:
    """Each backend, its indexes made."""
    await backend.ensure_indexes()
    return backend


@pytest.fixture
async def mongo_store(mongo: AsyncMongoClient[Any], database_name: str) -> MongoSagaStore:
    """The MongoDB store alone (for what only it does), its indexes made."""
    made = MongoSagaStore(mongo, database_name)
    await made.ensure_indexes()
    return made
