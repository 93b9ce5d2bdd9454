"""Adapters: the I/O edge behind the ports of ``coordinator.ports``.

``mongo.MongoSagaStore`` and its in-memory double ``memory.InMemorySagaStore`` implement
``SagaStore``. Driver exceptions never leave this package: they become ``AdapterError``s.
"""

from __future__ import annotations

from coordinator.adapters.memory import InMemorySagaStore
from coordinator.adapters.mongo import (
    MongoSagaStore,
    RoundTripCounter,
    as_stored,
    make_client,
    stored_datetime,
)

__all__ = [
    "InMemorySagaStore",
    "MongoSagaStore",
    "RoundTripCounter",
    "as_stored",
    "make_client",
    "stored_datetime",
]
