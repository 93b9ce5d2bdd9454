"""Retention of the participant SDK's idempotency records, against a MongoDB-wire server.

A final record (finished, or a tombstone) carries ``expires_at`` = when it became final +
the retention, and a TTL index ``{expires_at: 1}`` with ``expireAfterSeconds: 0`` deletes it
after that instant; a claim in progress never carries the field. Most tests only check the
fields and the index on the session's server (mongod's TTL monitor runs every 60 s); the
last one runs a SecantusDB in this process with a fast TTL sweeper to see records go.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from participants._store import DEFAULT_RECORD_RETENTION, OutcomeStore, new_owner

pytestmark = pytest.mark.integration

Client = AsyncMongoClient[dict[str, Any]]

RETENTION = timedelta(hours=2)
REPLY = {"status": "succeeded", "output": {"reservation_id": "r-1"}}
TOMBSTONE = {
    "status": "failed",
    "error": {"code": "compensated", "message": "…", "retryable": False},
}
# BSON dates hold milliseconds: a stored instant may be up to 1 ms before the one written.
MS = timedelta(milliseconds=1)


@pytest.fixture
async def client(mongodb_url: str, mongo: Client) -> AsyncIterator[Client]:
    """A client like the participant's (``tz_aware``); ``mongo`` drops the database after."""
    made: Client = AsyncMongoClient(mongodb_url, tz_aware=True)
    try:
        yield made
    finally:
        await made.close()


def key() -> str:
    return f"{uuid.uuid4().hex}:reserve:action"


def store_of(
    client: Client, database: str, retention: timedelta | None = RETENTION
) -> OutcomeStore:
    return OutcomeStore(client, database, "inventory", retention=retention)


async def record(client: Client, database: str, k: str) -> dict[str, Any]:
    doc = await client[database]["participant_outcomes"].find_one({"_id": k})
    assert doc is not None
    return doc


async def ttl_indexes(client: Client, database: str) -> dict[str, dict[str, Any]]:
    info = await client[database]["participant_outcomes"].index_information()
    return {name: spec for name, spec in info.items() if "expireAfterSeconds" in spec}


def assert_expires(doc: dict[str, Any], since: datetime, until: datetime, keep: timedelta) -> None:
    assert since + keep - MS <= doc["expires_at"] <= until + keep


async def test_the_ttl_index_expires_records_at_expires_at(
    client: Client, database_name: str
) -> None:
    await store_of(client, database_name).ensure_indexes()
    indexes = await ttl_indexes(client, database_name)
    assert len(indexes) == 1
    (spec,) = indexes.values()
    assert spec["key"] == [("expires_at", 1)]
    assert spec["expireAfterSeconds"] == 0
    assert spec["sparse"] is True  # only records that carry the field: the final ones
    # Another retention (or none) on a later run asks for the very same index: no conflict.
    for retention in (None, timedelta(days=30), DEFAULT_RECORD_RETENTION):
        await store_of(client, database_name, retention).ensure_indexes()
    assert await ttl_indexes(client, database_name) == indexes


async def test_an_index_made_by_hand_on_the_field_does_not_fail_the_start(
    client: Client, database_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    collection = client[database_name]["participant_outcomes"]
    await collection.create_index("expires_at", expireAfterSeconds=3600)
    with caplog.at_level(logging.WARNING, logger="participants"):
        await store_of(client, database_name).ensure_indexes()
    assert "could not create the TTL index" in caplog.text
    (spec,) = (await ttl_indexes(client, database_name)).values()
    assert spec["expireAfterSeconds"] == 3600


@pytest.mark.parametrize("status", ["succeeded", "failed"])
async def test_a_finished_record_expires_after_the_retention_a_claim_never(
    client: Client, database_name: str, status: Any
) -> None:
    store = store_of(client, database_name)
    k = key()
    claim = await store.claim(k, saga_id="s-1")
    assert claim is not None
    assert "expires_at" not in await record(client, database_name, k)
    assert await store.renew(claim)
    assert "expires_at" not in await record(client, database_name, k)
    since = datetime.now(UTC)
    assert await store.finish(claim, status, REPLY)
    until = datetime.now(UTC)
    doc = await record(client, database_name, k)
    assert doc["status"] == status
    assert_expires(doc, since, until, RETENTION)


async def test_a_claim_taken_over_gets_no_expiry(client: Client, database_name: str) -> None:
    k = key()
    await client[database_name]["participant_outcomes"].insert_one(
        {
            "_id": k,
            "participant": "inventory",
            "status": "in_progress",
            "owner": "crashed",
            "lease_until": datetime.now(UTC) - timedelta(hours=1),
        }
    )
    store = store_of(client, database_name)
    crashed = await store.get(k)
    assert crashed is not None and await store.expired(crashed)
    claim = await store.take_over(crashed, new_owner())
    assert claim is not None
    doc = await record(client, database_name, k)
    assert doc["owner"] == claim.owner
    assert "expires_at" not in doc


async def test_a_tombstone_expires_too(client: Client, database_name: str) -> None:
    store = store_of(client, database_name)
    k = key()
    since = datetime.now(UTC)
    assert await store.tombstone(k, TOMBSTONE, saga_id="s-1", step="reserve", kind="action")
    until = datetime.now(UTC)
    assert_expires(await record(client, database_name, k), since, until, RETENTION)


async def test_the_default_retention_is_seven_days(client: Client, database_name: str) -> None:
    store = OutcomeStore(client, database_name, "inventory")
    assert store.retention == DEFAULT_RECORD_RETENTION == timedelta(days=7)
    k = key()
    claim = await store.claim(k)
    assert claim is not None
    since = datetime.now(UTC)
    assert await store.finish(claim, "succeeded", REPLY)
    until = datetime.now(UTC)
    assert_expires(await record(client, database_name, k), since, until, timedelta(days=7))


async def test_without_retention_records_are_kept_forever(
    client: Client, database_name: str
) -> None:
    store = store_of(client, database_name, None)
    finished, tombstoned = key(), key()
    claim = await store.claim(finished)
    assert claim is not None
    assert await store.finish(claim, "succeeded", REPLY)
    assert await store.tombstone(tombstoned, TOMBSTONE)
    for k in (finished, tombstoned):
        doc = await record(client, database_name, k)
        assert doc["status"] in ("succeeded", "failed")
        assert "expires_at" not in doc


async def test_expired_records_go_claims_and_kept_records_stay() -> None:
    """A SecantusDB whose TTL sweeper runs every 0.2 s really deletes expired records."""
    server_module = pytest.importorskip("secantus.server")
    server = server_module.SecantusDBServer(
        "127.0.0.1",
        0,
        ":memory:",
        replica_set_name=None,
        enable_test_commands=False,
        ttl_sweep_seconds=0.2,
    )
    await asyncio.to_thread(server.start)
    client: Client = AsyncMongoClient(f"{server.uri}?directConnection=true", tz_aware=True)
    try:
        short = store_of(client, "retention", timedelta(milliseconds=100))
        forever = store_of(client, "retention", None)
        await short.ensure_indexes()
        finished, tombstoned, claimed, kept = key(), key(), key(), key()
        claim = await short.claim(finished)
        assert claim is not None
        assert await short.finish(claim, "succeeded", REPLY)
        assert await short.tombstone(tombstoned, TOMBSTONE)
        assert await short.claim(claimed) is not None
        claim = await forever.claim(kept)
        assert claim is not None
        assert await forever.finish(claim, "succeeded", REPLY)

        async with asyncio.timeout(10):
            while True:
                left = [k for k in (finished, tombstoned) if await short.get(k) is not None]
                if not left:
                    break
                await asyncio.sleep(0.1)
        claimed_record = await short.get(claimed)
        assert claimed_record is not None and claimed_record.status == "in_progress"
        kept_record = await forever.get(kept)
        assert kept_record is not None and kept_record.final
        # The price of expiry: the key is new again, a duplicate would run the handler.
        assert await short.claim(finished) is not None
    finally:
        await client.close()
        await asyncio.to_thread(server.stop)
