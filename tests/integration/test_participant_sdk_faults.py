"""The SDK's exactly-once promise under faults: a slow database, a broker that refuses
replies, outputs MongoDB cannot store, and compensations after an operator retry.

The fixtures are those of ``test_participant_sdk``: the test plays the coordinator, against
a real RabbitMQ and a MongoDB-wire server (the slow database is the same server behind a
TCP proxy that holds every chunk back).
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.uri_parser import parse_uri

from participants import Delivery, Participant
from schemas.envelope import idempotency_key
from schemas.topology import queue_arguments
from tests.integration import test_participant_sdk as sdk
from tests.integration.tcp_proxy import Proxy
from tests.integration.test_participant_sdk import (
    Broker,
    Factory,
    assert_quiet,
    next_message,
    reply_of,
)

broker = sdk.broker
make_inventory = sdk.make_inventory

pytestmark = pytest.mark.integration

SLOW = 60.0  # seconds to wait for a reply when every database round trip takes seconds


@pytest.fixture
async def slow_mongodb(mongodb_url: str) -> AsyncIterator[tuple[Proxy, str]]:
    """A proxy in front of the test's MongoDB (its ``delay`` slows every round trip), and
    the URL through it."""
    host, port = parse_uri(mongodb_url)["nodelist"][0]
    proxy = await Proxy(host, port).start()
    try:
        yield proxy, f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true"
    finally:
        await proxy.stop()


async def warm(participant: Participant, connections: int = 8) -> None:
    """Open connections to the database now, while it is fast (a new connection's
    handshake through a slow proxy takes several round trips)."""
    store = participant._executor.store
    await asyncio.gather(*(store.get(f"warm-{index}") for index in range(connections)))


@pytest.mark.parametrize("processes", [2, 1], ids=["two-processes", "one-process"])
async def test_a_database_as_slow_as_the_lease_never_runs_an_action_twice(
    broker: Broker,
    make_inventory: Factory,
    slow_mongodb: tuple[Proxy, str],
    prefix: str,
    processes: int,
) -> None:
    # Every round trip (1.5 s each way) takes longer than the lease (2 s), and the same
    # command arrives twice at once: in two participant processes (two queues bound to the
    # same commands), or twice in one.
    proxy, url = slow_mongodb
    async with AsyncExitStack() as stack:
        participants = [
            await stack.enter_async_context(
                make_inventory(
                    lease=2.0, mongodb_url=url, queue=f"{prefix}.inventory-{index}.commands"
                )
            )
            for index in range(processes)
        ]
        for participant in participants:
            await warm(participant)
        proxy.delay = 1.5
        saga_id = await broker.send("reserve_stock", {"order_id": "o-1", "slow": 2.0})
        if processes == 1:
            await broker.send("reserve_stock", {"order_id": "o-1", "slow": 2.0}, saga_id=saga_id)
        first = json.loads((await next_message(broker.replies, SLOW)).body)
        second = json.loads((await next_message(broker.replies, SLOW)).body)
        key = idempotency_key(saga_id, "reserve", "action")
        assert sum(participant.executions[key] for participant in participants) == 1
        assert first == second and first["status"] == "succeeded"
        proxy.delay = 0.0


async def test_a_reply_the_broker_refuses_is_held_and_published_again_never_dead_lettered(
    broker: Broker, make_inventory: Factory, prefix: str
) -> None:
    # The queue the replies go to refuses every message (length 0, reject-publish): the
    # broker nacks each reply, as during a failover.
    replies = await broker.channel.get_exchange(broker.exchanges.replies)
    full = await broker.channel.declare_queue(
        f"{prefix}.full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    await full.bind(replies, routing_key="refusing")
    async with make_inventory(delivery_limit=2) as inventory:
        inventory.policy = type(inventory.policy)(max_tries=2, delay=0.05, max_delay=0.2)
        assert inventory._consumer is not None
        inventory._consumer.policy = inventory.policy
        saga_id = await broker.send("reserve_stock", {"order_id": "o-2"}, reply_to="refusing")
        key = idempotency_key(saga_id, "reserve", "action")
        await assert_quiet(broker.dead, 3.0)  # many refusals by now: held, not dead-lettered
        assert inventory.executions[key] == 1
        # The broker takes replies again: the held command publishes the stored reply. The
        # accepting queue is bound before the refusing one goes, so no retry finds the routing
        # key unbound (the broker would take such a reply and drop it).
        taken = await broker.channel.declare_queue(
            f"{prefix}.taken", durable=True, arguments=queue_arguments(broker.exchanges)
        )
        try:
            await taken.bind(replies, routing_key="refusing")
            await full.delete(if_unused=False, if_empty=False)
            body = json.loads((await next_message(taken)).body)
            assert body["status"] == "succeeded" and body["output"]["order_id"] == "o-2"
            assert inventory.executions[key] == 1
            await assert_quiet(broker.dead)
        finally:
            await taken.delete(if_unused=False, if_empty=False)


BAD_OUTPUTS: dict[str, tuple[Any, str]] = {
    "nul-in-key": ({"a\x00b": 1}, "NULL byte"),
    "integer-over-8-bytes": ({"n": 1 << 70}, "64 bits"),
    "not-a-number": ({"x": math.nan}, "NaN"),
    "not-a-dict": (["r-1"], "not a dict"),
}


@pytest.mark.parametrize("case", BAD_OUTPUTS, ids=list(BAD_OUTPUTS))
async def test_an_output_that_cannot_be_stored_is_a_final_invalid_output(
    broker: Broker, make_inventory: Factory, case: str
) -> None:
    output, problem = BAD_OUTPUTS[case]
    inventory = make_inventory()

    @inventory.action("bad_output")
    async def bad(input: dict[str, Any], delivery: Delivery) -> Any:
        return output

    async with inventory:
        saga_id = await broker.send("bad_output", {})
        body, _ = await reply_of(broker)
        assert body["status"] == "failed"
        assert body["error"]["code"] == "invalid_output"
        assert body["error"]["retryable"] is False
        assert problem in body["error"]["message"], body["error"]["message"]
        key = idempotency_key(saga_id, "reserve", "action")
        await broker.send("bad_output", {}, saga_id=saga_id, attempt=2)
        again, _ = await reply_of(broker)
        assert again == body and inventory.executions[key] == 1
        # The action ran: a compensation sent for it calls the compensation handler.
        await broker.send("release_stock", {}, saga_id=saga_id, kind="compensation")
        undone, _ = await reply_of(broker)
        assert undone == {"status": "succeeded", "output": {"released": None}}
        assert inventory.executions[idempotency_key(saga_id, "reserve", "compensation")] == 1
        await assert_quiet(broker.dead)


async def test_a_compensation_after_an_operator_retry_undoes_the_retried_action(
    broker: Broker, make_inventory: Factory
) -> None:
    async with make_inventory() as inventory:
        saga_id = uuid.uuid4().hex
        base = idempotency_key(saga_id, "reserve", "action")
        await broker.send("decline", {}, saga_id=saga_id)  # fails, not retryable
        failed, _ = await reply_of(broker)
        assert failed["error"]["code"] == "out_of_stock"
        # The operator retries the saga: the action runs again under `:r1`, and succeeds.
        await broker.send("reserve_stock", {"order_id": "o-3"}, saga_id=saga_id, key=f"{base}:r1")
        retried, _ = await reply_of(broker)
        reservation_id = retried["output"]["reservation_id"]
        assert inventory.executions[f"{base}:r1"] == 1
        # A later step fails: the compensation (its input lacks the reservation) must undo
        # what the retry reserved.
        await broker.send("release_stock", {}, saga_id=saga_id, kind="compensation")
        body, _ = await reply_of(broker)
        assert body == {"status": "succeeded", "output": {"released": reservation_id}}
        assert inventory.executions[idempotency_key(saga_id, "reserve", "compensation")] == 1


async def test_a_compensation_finds_the_latest_of_several_retried_actions(
    broker: Broker, make_inventory: Factory, mongodb_url: str, database_name: str
) -> None:
    async with make_inventory() as inventory:
        saga_id = uuid.uuid4().hex
        base = idempotency_key(saga_id, "reserve", "action")
        outputs = []
        for key in (base, f"{base}:r1", f"{base}:r2"):
            await broker.send("reserve_stock", {"order_id": "o-4"}, saga_id=saga_id, key=key)
            body, _ = await reply_of(broker)
            outputs.append(body["output"]["reservation_id"])
        # A record of another step whose key starts like this one's is not the action's.
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
        try:
            await client[database_name]["participant_outcomes"].insert_one(
                {"_id": f"{base}:r9x", "status": "in_progress", "owner": "other"}
            )
        finally:
            await client.close()
        await broker.send("release_stock", {}, saga_id=saga_id, kind="compensation")
        body, _ = await reply_of(broker)
        assert body == {"status": "succeeded", "output": {"released": outputs[-1]}}
        assert inventory.executions[idempotency_key(saga_id, "reserve", "compensation")] == 1
