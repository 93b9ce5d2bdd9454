"""Every query of the ``sagas`` collection is served by its index, and no other index exists.

The queries are the ones the code sends (captured from the driver's command monitor while
the store and the listing run them), explained by the server. Two plans differ on the
embedded SecantusDB, whose planner is simpler than mongod's: it scans for ``$elemMatch``
(the awaited-event look-up is checked on a real ``mongod`` only, ``SAGA_TEST_MONGODB_URL``),
and it leaves the fields of an index's partial filter out of the key prefix it matches, so
the look-up by (key, definition) scans there, as it did with the earlier index.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.monitoring import CommandListener, CommandStartedEvent

from coordinator.adapters import MongoSagaStore
from coordinator.adapters.queries import SagaQueries
from coordinator.engine.state import Awaiting, Command, SagaState, StepState

pytestmark = pytest.mark.integration

NOW = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
LEASE = timedelta(seconds=5)

SECANTUS_SCANS = {"find by key"}
"""Queries SecantusDB's planner serves by a collection scan (see the module docstring)."""


class FindRecorder(CommandListener):
    """Keeps the ``find`` commands sent on the ``sagas`` collection."""

    def __init__(self) -> None:
        self.finds: list[dict[str, Any]] = []

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == "sagas":
            command = {k: v for k, v in event.command.items() if not k.startswith("$")}
            command.pop("lsid", None)
            self.finds.append(command)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


def _plan_indexes(plan: dict[str, Any]) -> Iterator[str]:
    """The index names of every stage of a plan tree."""
    if "indexName" in plan:
        yield plan["indexName"]
    for name in ("inputStage", "queryPlan"):
        if isinstance(plan.get(name), dict):
            yield from _plan_indexes(plan[name])
    for child in plan.get("inputStages", []):
        yield from _plan_indexes(child)


@pytest.fixture
async def recorded(
    mongodb_url: str, database_name: str, mongo: AsyncMongoClient[Any]
) -> AsyncIterator[tuple[MongoSagaStore, SagaQueries, FindRecorder, Any]]:
    recorder = FindRecorder()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongodb_url, tz_aware=True, event_listeners=[recorder]
    )
    store = MongoSagaStore(client, database_name)
    queries = SagaQueries(client, database_name)
    await store.ensure_indexes()
    await queries.ensure_indexes()
    try:
        yield store, queries, recorder, client[database_name]
    finally:
        await client.close()


def saga(index: int, now: datetime) -> SagaState:
    running = index % 3 != 0
    command = Command(
        message_id=f"m-{index}",
        routing_key="p.c",
        type="c",
        reply_to="r",
        timestamp=now,
        headers={},
        body={},
    )
    return SagaState(
        id=f"s-{index:03d}",
        definition=f"d{index % 2}",
        definition_version=1,
        key=f"k-{index}" if index % 5 else None,
        status="running" if running else "completed",
        steps=[StepState(name="a")],
        created_at=now + timedelta(seconds=index),
        updated_at=now + timedelta(seconds=index),
        wake_at=now + timedelta(seconds=index) if running else None,
        outbox=[command] if running and index % 2 else [],
        awaiting=[Awaiting(step="a", event="paid", value=index, since=now)] if running else [],
    )


async def _is_secantus(db: Any) -> bool:
    return "secantusVersion" in await db.command("buildInfo")


async def test_the_collection_has_exactly_the_indexes_its_queries_use(recorded: Any) -> None:
    db = recorded[3]
    names = {index["name"] async for index in await db["sagas"].list_indexes()}
    assert names == {
        "_id_",
        "key_definition_unique",
        "due",
        "unpublished_outbox",
        "list_created",
        "list_definition_created",
        "list_status_created",
        "awaiting",
        "awaiting_since",
    }


async def test_every_query_is_served_by_its_index(recorded: Any) -> None:
    store, queries, recorder, db = recorded
    now = NOW
    for index in range(60):
        await store.insert_saga(saga(index, now))
    secantus = await _is_secantus(db)
    intended: list[tuple[str, str, dict[str, Any]]] = []

    async def run(query: str, index_name: str, call: Any) -> None:
        before = len(recorder.finds)
        await call
        intended.append((query, index_name, recorder.finds[before]))

    await run("by id", "_id_", store.load_saga("s-001"))
    await run("find by key", "key_definition_unique", store.find_saga("d1", "k-1"))
    await run("timers", "due", store.claim_due(now + timedelta(seconds=30), LEASE, 10))
    await run("relay", "unpublished_outbox", store.unpublished(now + timedelta(hours=1), 10))
    await run("list", "list_created", queries.list_sagas(limit=5))
    await run("list definition", "list_definition_created", queries.list_sagas(definition="d0"))
    await run("list status", "list_status_created", queries.list_sagas(status="running"))
    await run("list key", "key_definition_unique", queries.list_sagas(key="k-7", limit=5))
    for query, index_name, command in intended:
        explained = await db.command({"explain": command, "verbosity": "queryPlanner"})
        used = set(_plan_indexes(explained["queryPlanner"]["winningPlan"]))
        expected = set() if secantus and query in SECANTUS_SCANS else {index_name}
        assert used == expected, (query, command, explained["queryPlanner"]["winningPlan"])


async def test_the_awaited_event_lookups_use_their_indexes(recorded: Any) -> None:
    store, recorder, db = recorded[0], recorded[2], recorded[3]
    if await _is_secantus(db):
        pytest.skip("SecantusDB's planner scans for $elemMatch: checked on a real mongod only")
    for index in range(30):
        await store.insert_saga(saga(index, NOW))
    calls = {
        "awaiting": store.waiting_sagas("paid", [7], None, 10),
        "awaiting_since": store.recently_waiting(NOW - timedelta(minutes=1), None, 10),
    }
    for index_name, call in calls.items():
        before = len(recorder.finds)
        assert await call, index_name
        command = recorder.finds[before]
        explained = await db.command({"explain": command, "verbosity": "queryPlanner"})
        used = set(_plan_indexes(explained["queryPlanner"]["winningPlan"]))
        assert used == {index_name}, (command, explained["queryPlanner"]["winningPlan"])
