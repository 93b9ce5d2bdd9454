"""The SDK's claims and final writes are group-committed and keep their own outcomes.

Against a MongoDB-wire server (SecantusDB, or ``SAGA_TEST_MONGODB_URL``): concurrent
commands' claims and outcomes share bulk writes; a duplicate claim, a final write whose
claim was taken over and a write the encoder refuses each get their own answer, and no
other write of their batch is affected.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from coordinator.adapters.monitor import RoundTripCounter
from participants._store import Claim, OutcomeStore, Record, new_owner

pytestmark = pytest.mark.integration

Client = AsyncMongoClient[dict[str, Any]]
REPLY = {"status": "succeeded", "output": {"n": 1}}


@pytest.fixture
async def counted(
    mongodb_url: str, mongo: Client
) -> AsyncIterator[tuple[Client, RoundTripCounter]]:
    counter = RoundTripCounter()
    made: Client = AsyncMongoClient(mongodb_url, tz_aware=True, event_listeners=[counter])
    try:
        yield made, counter
    finally:
        await made.close()


def keys(count: int) -> list[str]:
    run = uuid.uuid4().hex
    return [f"{run}-{index}:step:action" for index in range(count)]


async def test_concurrent_claims_and_outcomes_share_round_trips(
    counted: tuple[Client, RoundTripCounter], database_name: str
) -> None:
    client, counter = counted
    store = OutcomeStore(client, database_name, "inventory")
    names = keys(20)
    counter.reset()
    claims = await asyncio.gather(*(store.claim(name, saga_id="s") for name in names))
    assert all(isinstance(claim, Claim) for claim in claims)
    assert counter.counts["insert"] <= 3  # the first alone, the rest together
    counter.reset()
    finished = await asyncio.gather(
        *(store.finish(claim, "succeeded", REPLY) for claim in claims if claim is not None)
    )
    assert finished == [True] * 20
    assert counter.counts["update"] <= 3
    for name in names:
        record = await store.get(name)
        assert record is not None and record.status == "succeeded" and record.reply == REPLY


async def test_each_write_of_a_batch_keeps_its_own_outcome(
    counted: tuple[Client, RoundTripCounter], database_name: str
) -> None:
    client, _ = counted
    store = OutcomeStore(client, database_name, "inventory")
    first, second, third, fourth = keys(4)
    claims = await asyncio.gather(*(store.claim(name) for name in (first, second, third)))
    assert None not in claims
    mine = [claim for claim in claims if claim is not None]
    # A claim taken over by another delivery after its lease: its owner changed.
    collection = client[database_name]["participant_outcomes"]
    await collection.update_one({"_id": second}, {"$set": {"owner": "someone else"}})
    outcomes = await asyncio.gather(
        store.claim(fourth),  # leaves at once, alone; the others wait and form one batch
        store.finish(mine[0], "succeeded", REPLY),
        store.finish(mine[1], "succeeded", REPLY),  # lost: matched falls short, read back
        store.finish(mine[2], "failed", {"status": "failed"}),
        store.claim(first),  # a duplicate of a key already claimed
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], Claim)
    assert outcomes[1:] == [True, False, True, None]
    lost = await store.get(second)
    assert lost is not None and lost.status == "in_progress"


async def test_an_outcome_the_encoder_refuses_fails_alone(
    counted: tuple[Client, RoundTripCounter], database_name: str
) -> None:
    client, _ = counted
    store = OutcomeStore(client, database_name, "inventory")
    names = keys(5)
    claims = [await store.claim(name) for name in names]
    assert None not in claims
    mine = [claim for claim in claims if claim is not None]
    too_big = {"status": "succeeded", "output": {"n": 1 << 70}}  # over BSON's 8-byte ints
    outcomes = await asyncio.gather(
        store.finish(mine[0], "succeeded", REPLY),
        store.finish(mine[1], "succeeded", too_big),
        *(store.finish(claim, "succeeded", REPLY) for claim in mine[2:]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], OverflowError)
    assert outcomes[:1] + outcomes[2:] == [True] * 4
    refused = await store.get(names[1])
    assert refused is not None and refused.status == "in_progress"


async def expiry_of(store: OutcomeStore, record: Record) -> None:
    """Return once ``record``'s claim has expired on the database's clock."""
    async with asyncio.timeout(10):
        while True:
            if await store.expired(record):
                return
            await asyncio.sleep(0.01)


async def test_a_lease_takeover_still_decides_between_copies(
    counted: tuple[Client, RoundTripCounter], database_name: str
) -> None:
    client, _ = counted
    store = OutcomeStore(client, database_name, "inventory", lease=timedelta(milliseconds=20))
    (name,) = keys(1)
    first = await store.claim(name)
    assert first is not None
    assert await store.claim(name) is None  # a claim never takes over by itself
    record = await store.get(name)
    assert record is not None and record.owner == first.owner
    # Expired only once the lease and its margin have passed on the database's clock.
    await expiry_of(store, record)
    second = await store.take_over(record, new_owner())
    assert second is not None and second.owner != first.owner
    assert await store.take_over(record, new_owner()) is None  # the record changed
    assert await store.finish(first, "succeeded", REPLY) is False
    assert await store.finish(second, "succeeded", REPLY) is True


async def test_a_renewal_since_the_read_defeats_a_takeover(
    counted: tuple[Client, RoundTripCounter], database_name: str
) -> None:
    client, _ = counted
    store = OutcomeStore(client, database_name, "inventory", lease=timedelta(milliseconds=20))
    (name,) = keys(1)
    first = await store.claim(name)
    assert first is not None
    record = await store.get(name)
    assert record is not None
    await expiry_of(store, record)
    assert await store.renew(first)  # the claimant was alive after all
    assert await store.take_over(record, new_owner()) is None
    assert await store.finish(first, "succeeded", REPLY) is True
