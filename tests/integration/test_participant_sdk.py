"""The participant SDK against a real RabbitMQ and a MongoDB-wire server (no mocks).

Each test plays the coordinator: it publishes commands to ``{prefix}.commands`` and reads
replies from a queue bound to ``{prefix}.replies`` with routing key ``coordinator``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from participants import Delivery, Participant, RetryableError, StepError
from participants.examples import payments, shipping
from schemas.envelope import HEADER_REJECTION, Exchanges, idempotency_key
from schemas.topology import declare_exchanges, queue_arguments

pytestmark = pytest.mark.integration

WAIT = 15.0


@dataclass
class Broker:
    """The coordinator's side of the wire, for one test."""

    channel: AbstractChannel
    exchanges: Exchanges
    replies: AbstractQueue
    dead: AbstractQueue

    async def send(
        self,
        command: str,
        body: Any,
        *,
        participant: str = "inventory",
        saga_id: str | None = None,
        step: str = "reserve",
        kind: str = "action",
        attempt: int = 1,
        headers: dict[str, Any] | None = None,
        raw: bytes | None = None,
        key: str | None = None,
        reply_to: str = "coordinator",
    ) -> str:
        saga_id = saga_id or uuid.uuid4().hex
        if headers is None:
            headers = {
                "x-saga-id": saga_id,
                "x-saga-name": "order-fulfillment",
                "x-saga-version": 1,
                "x-saga-step": step,
                "x-saga-kind": kind,
                "x-saga-attempt": attempt,
                "x-idempotency-key": key or idempotency_key(saga_id, step, kind),  # type: ignore[arg-type]
                "x-deadline": (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            }
        exchange = await self.channel.get_exchange(self.exchanges.commands)
        await exchange.publish(
            aio_pika.Message(
                raw if raw is not None else json.dumps(body).encode(),
                headers=headers,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                correlation_id=saga_id,
                message_id=uuid.uuid4().hex,
                type=command,
                reply_to=reply_to,
                timestamp=datetime.now(UTC),
            ),
            routing_key=f"{participant}.{command}",
        )
        return saga_id


async def next_message(queue: AbstractQueue, wait: float = WAIT) -> AbstractIncomingMessage:
    """The next message of ``queue``, acked; fails the test after ``wait`` seconds."""
    try:
        async with asyncio.timeout(wait):
            while True:
                message = await queue.get(no_ack=True, fail=False)
                if message is not None:
                    return message
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"no message on {queue.name} within {wait}s") from None


async def reply_of(broker: Broker) -> tuple[dict[str, Any], AbstractIncomingMessage]:
    message = await next_message(broker.replies)
    return json.loads(message.body), message


async def assert_quiet(queue: AbstractQueue, seconds: float = 0.5) -> None:
    await asyncio.sleep(seconds)
    assert await queue.get(no_ack=True, fail=False) is None


@pytest.fixture
async def broker(amqp_url: str, prefix: str) -> AsyncIterator[Broker]:
    exchanges = Exchanges(prefix)
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    try:
        declared = await declare_exchanges(channel, exchanges)
        replies = await channel.declare_queue(
            f"{prefix}.coordinator.replies", durable=True, arguments=queue_arguments(exchanges)
        )
        await replies.bind(declared.replies, routing_key="coordinator")
        dead = await channel.declare_queue(f"{prefix}.dead", durable=True)
        await dead.bind(declared.dead_letter)
        yield Broker(channel, exchanges, replies, dead)
    finally:
        for queue in (
            f"{prefix}.coordinator.replies",
            f"{prefix}.dead",
            f"{prefix}.inventory.commands",
            f"{prefix}.inventory-0.commands",
            f"{prefix}.inventory-1.commands",
            f"{prefix}.payments.commands",
            f"{prefix}.shipping.commands",
            exchanges.unrouted,
        ):
            await channel.queue_delete(queue)
        for name in (exchanges.events, exchanges.commands, exchanges.replies, exchanges.unrouted):
            await channel.exchange_delete(name)
        await channel.exchange_delete(exchanges.dead_letter)
        await connection.close()


Factory = Callable[..., Participant]


@pytest.fixture
def make_inventory(
    amqp_url: str, mongodb_url: str, database_name: str, prefix: str, mongo: Any
) -> Factory:
    """Builds test participants named ``inventory`` sharing one database; keyword
    arguments go to ``Participant`` (and may replace the URLs and the queue)."""

    def make(**options: Any) -> Participant:
        settings: dict[str, Any] = {
            "amqp_url": amqp_url,
            "mongodb_url": mongodb_url,
            "database": database_name,
            "prefix": prefix,
            "queue": f"{prefix}.inventory.commands",
        }
        inventory = Participant("inventory", **{**settings, **options})

        @inventory.action("reserve_stock")
        async def reserve(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
            if input.get("slow"):
                await asyncio.sleep(float(input["slow"]))
            return {"reservation_id": f"r-{uuid.uuid4().hex[:8]}", "order_id": input["order_id"]}

        @inventory.action("flaky")
        async def flaky(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
            if delivery.attempt == 1:
                raise RetryableError("warehouse_busy", "try again")
            return {"attempt": delivery.attempt}

        @inventory.action("decline")
        async def decline(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
            raise StepError("out_of_stock", "no more widgets")

        @inventory.action("boom")
        async def boom(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
            raise ZeroDivisionError("division by zero")

        @inventory.compensation("release_stock")
        async def release(input: dict[str, Any], delivery: Delivery) -> dict[str, Any] | None:
            recorded = (delivery.action_output or {}).get("reservation_id")
            return {"released": input.get("reservation_id") or recorded}

        return inventory

    return make


@pytest.fixture
async def inventory(make_inventory: Factory) -> AsyncIterator[Participant]:
    async with make_inventory() as participant:
        yield participant


async def test_success_reply_copies_headers(broker: Broker, inventory: Participant) -> None:
    saga_id = await broker.send("reserve_stock", {"order_id": "o-1", "items": []})
    body, message = await reply_of(broker)
    assert body["status"] == "succeeded"
    assert body["output"]["order_id"] == "o-1"
    assert body["output"]["reservation_id"].startswith("r-")
    assert message.correlation_id == saga_id
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id
    headers = message.headers
    assert headers["x-saga-id"] == saga_id
    assert headers["x-saga-name"] == "order-fulfillment"
    assert headers["x-saga-version"] == 1
    assert headers["x-saga-step"] == "reserve"
    assert headers["x-saga-kind"] == "action"
    assert headers["x-saga-attempt"] == 1
    assert headers["x-idempotency-key"] == f"{saga_id}:reserve:action"
    assert str(headers["traceparent"]).startswith("00-4bf92f")


async def test_repeated_key_replies_the_same_outcome_once_executed(
    broker: Broker, inventory: Participant
) -> None:
    saga_id = await broker.send("reserve_stock", {"order_id": "o-2"})
    first, _ = await reply_of(broker)
    await broker.send("reserve_stock", {"order_id": "o-2"}, saga_id=saga_id, attempt=2)
    second, message = await reply_of(broker)
    assert second == first
    assert message.headers["x-saga-attempt"] == 2
    assert inventory.executions[f"{saga_id}:reserve:action"] == 1


async def test_concurrent_duplicates_run_the_handler_once(
    broker: Broker, inventory: Participant
) -> None:
    saga_id = await broker.send("reserve_stock", {"order_id": "o-3", "slow": 0.5})
    await broker.send("reserve_stock", {"order_id": "o-3", "slow": 0.5}, saga_id=saga_id)
    first, _ = await reply_of(broker)
    second, _ = await reply_of(broker)
    assert first == second
    assert inventory.executions[f"{saga_id}:reserve:action"] == 1


async def test_retryable_error_then_success(broker: Broker, inventory: Participant) -> None:
    saga_id = await broker.send("flaky", {})
    body, _ = await reply_of(broker)
    assert body == {
        "status": "failed",
        "error": {"code": "warehouse_busy", "message": "try again", "retryable": True},
    }
    await broker.send("flaky", {}, saga_id=saga_id, attempt=2)
    body, _ = await reply_of(broker)
    assert body == {"status": "succeeded", "output": {"attempt": 2}}
    assert inventory.executions[f"{saga_id}:reserve:action"] == 2


async def test_step_error_is_final_and_not_retryable(
    broker: Broker, inventory: Participant
) -> None:
    saga_id = await broker.send("decline", {})
    body, _ = await reply_of(broker)
    assert body["error"] == {
        "code": "out_of_stock",
        "message": "no more widgets",
        "retryable": False,
    }
    await broker.send("decline", {}, saga_id=saga_id, attempt=2)
    again, _ = await reply_of(broker)
    assert again == body
    assert inventory.executions[f"{saga_id}:reserve:action"] == 1


async def test_unexpected_exception_is_retryable_with_its_type(
    broker: Broker, inventory: Participant
) -> None:
    await broker.send("boom", {})
    body, _ = await reply_of(broker)
    assert body["status"] == "failed"
    assert body["error"]["code"] == "ZeroDivisionError"
    assert body["error"]["retryable"] is True


async def test_compensation_without_action_succeeds_without_handler(
    broker: Broker, inventory: Participant
) -> None:
    saga_id = await broker.send("release_stock", {"reservation_id": "r-x"}, kind="compensation")
    body, message = await reply_of(broker)
    assert body == {"status": "succeeded", "output": {}}
    assert message.headers["x-saga-kind"] == "compensation"
    assert inventory.executions[f"{saga_id}:reserve:compensation"] == 0
    # A late action for the compensated step is refused rather than performed.
    await broker.send("reserve_stock", {"order_id": "o-4"}, saga_id=saga_id)
    late, _ = await reply_of(broker)
    assert late["status"] == "failed"
    assert late["error"]["code"] == "compensated"
    assert inventory.executions[f"{saga_id}:reserve:action"] == 0


async def test_compensation_after_action_calls_the_handler(
    broker: Broker, inventory: Participant
) -> None:
    saga_id = await broker.send("reserve_stock", {"order_id": "o-5"})
    action, _ = await reply_of(broker)
    reservation_id = action["output"]["reservation_id"]
    await broker.send(
        "release_stock", {"reservation_id": reservation_id}, saga_id=saga_id, kind="compensation"
    )
    body, _ = await reply_of(broker)
    assert body == {"status": "succeeded", "output": {"released": reservation_id}}
    assert inventory.executions[f"{saga_id}:reserve:compensation"] == 1


async def test_compensation_of_a_timed_out_action_gets_its_recorded_output(
    broker: Broker, inventory: Participant
) -> None:
    # The coordinator never saw the action's reply, so it sends null for its output.
    saga_id = await broker.send("reserve_stock", {"order_id": "o-6"})
    action, _ = await reply_of(broker)
    reservation_id = action["output"]["reservation_id"]
    await broker.send(
        "release_stock", {"reservation_id": None}, saga_id=saga_id, kind="compensation"
    )
    body, _ = await reply_of(broker)
    assert body == {"status": "succeeded", "output": {"released": reservation_id}}


async def test_unknown_command(broker: Broker, inventory: Participant) -> None:
    await broker.send("teleport", {})
    body, _ = await reply_of(broker)
    assert body["status"] == "failed"
    assert body["error"]["code"] == "unknown_command"
    assert body["error"]["retryable"] is False


@pytest.mark.parametrize(
    ("raw", "headers", "reason"),
    [
        (b"not json{", None, "not JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b"{}", {"x-saga-id": "s-1"}, "missing headers"),
    ],
    ids=["non-json", "json-array", "missing-headers"],
)
async def test_malformed_commands_are_dead_lettered(
    broker: Broker,
    inventory: Participant,
    raw: bytes,
    headers: dict[str, Any] | None,
    reason: str,
) -> None:
    await broker.send("reserve_stock", None, raw=raw, headers=headers)
    dead = await next_message(broker.dead)
    assert reason in str(dead.headers[HEADER_REJECTION])
    assert dead.body == raw
    await broker.send("reserve_stock", {"order_id": "o-6"})
    body, _ = await reply_of(broker)
    assert body["status"] == "succeeded"
    await assert_quiet(broker.dead)


async def test_oversized_command_is_dead_lettered(broker: Broker, inventory: Participant) -> None:
    await broker.send("reserve_stock", {"pad": "x" * (1024 * 1024)})
    dead = await next_message(broker.dead)
    assert "over the limit" in str(dead.headers[HEADER_REJECTION])
    await assert_quiet(broker.replies)


async def test_restart_still_dedupes(broker: Broker, make_inventory: Factory) -> None:
    async with make_inventory() as first:
        saga_id = await broker.send("reserve_stock", {"order_id": "o-7"})
        before, _ = await reply_of(broker)
        assert first.executions[f"{saga_id}:reserve:action"] == 1
    async with make_inventory() as second:
        await broker.send("reserve_stock", {"order_id": "o-7"}, saga_id=saga_id, attempt=2)
        after, _ = await reply_of(broker)
        assert after == before
        assert second.executions[f"{saga_id}:reserve:action"] == 0


async def test_example_payments_flaky_card(
    broker: Broker, amqp_url: str, mongodb_url: str, database_name: str, prefix: str, mongo: Any
) -> None:
    participant = payments.build(
        amqp_url=amqp_url,
        mongodb_url=mongodb_url,
        mongodb_database=database_name,
        exchange_prefix=prefix,
        queue=f"{prefix}.payments.commands",
    )
    async with participant:
        order = {"order_id": "o-8", "amount": 42.5, "card": payments.CARD_FLAKY}
        saga_id = await broker.send("charge", order, participant="payments", step="charge")
        body, _ = await reply_of(broker)
        assert body["error"]["code"] == "processor_unavailable"
        assert body["error"]["retryable"] is True
        await broker.send(
            "charge", order, participant="payments", step="charge", saga_id=saga_id, attempt=2
        )
        body, _ = await reply_of(broker)
        assert body["output"]["charge_id"].startswith("ch-")
        declined = {**order, "card": payments.CARD_DECLINED}
        await broker.send("charge", declined, participant="payments", step="charge")
        body, _ = await reply_of(broker)
        assert body["error"]["code"] == "card_declined"
        assert body["error"]["retryable"] is False


async def test_example_shipping_slow_address(
    broker: Broker, amqp_url: str, mongodb_url: str, database_name: str, prefix: str, mongo: Any
) -> None:
    participant = shipping.build(
        amqp_url=amqp_url,
        mongodb_url=mongodb_url,
        mongodb_database=database_name,
        exchange_prefix=prefix,
        queue=f"{prefix}.shipping.commands",
    )
    async with participant:
        started = asyncio.get_running_loop().time()
        order = {"order_id": "o-9", "address": "1 slow:300ms street"}
        await broker.send("create_shipment", order, participant="shipping", step="ship")
        body, _ = await reply_of(broker)
        assert asyncio.get_running_loop().time() - started >= 0.3
        assert body["output"]["tracking_number"].startswith("TRK-")


async def test_expired_claim_of_a_crashed_claimant_is_taken_over(
    broker: Broker, inventory: Participant, mongo: Any, database_name: str
) -> None:
    saga_id = uuid.uuid4().hex
    key = f"{saga_id}:reserve:action"
    await mongo[database_name]["participant_outcomes"].insert_one(
        {
            "_id": key,
            "participant": "inventory",
            "status": "in_progress",
            "owner": "crashed",
            # Long past its lease and the margin: its claimant died an hour ago.
            "lease_until": datetime.now(UTC) - timedelta(hours=1),
        }
    )
    await broker.send("reserve_stock", {"order_id": "o-10"}, saga_id=saga_id, attempt=2)
    body, _ = await reply_of(broker)
    assert body["status"] == "succeeded"
    assert inventory.executions[key] == 1
    record = await mongo[database_name]["participant_outcomes"].find_one({"_id": key})
    assert record["status"] == "succeeded"
    assert record["reply"] == body


async def test_compensation_while_the_action_is_in_progress_asks_for_a_retry(
    broker: Broker, inventory: Participant
) -> None:
    saga_id = await broker.send("reserve_stock", {"order_id": "o-11", "slow": 1.0})
    await asyncio.sleep(0.3)
    await broker.send("release_stock", {}, saga_id=saga_id, kind="compensation")
    body, _ = await reply_of(broker)
    assert body["error"] == {
        "code": "action_in_progress",
        "message": f"action {saga_id}:reserve:action is still in progress",
        "retryable": True,
    }
    action, _ = await reply_of(broker)
    assert action["status"] == "succeeded"
    await broker.send("release_stock", {}, saga_id=saga_id, kind="compensation", attempt=2)
    body, _ = await reply_of(broker)
    # The compensation carried no reservation id: the handler undid the recorded one.
    released = action["output"]["reservation_id"]
    assert body == {"status": "succeeded", "output": {"released": released}}
    assert inventory.executions[f"{saga_id}:reserve:compensation"] == 1


async def test_final_records_expire_after_the_retention(
    broker: Broker, make_inventory: Factory, mongo: Any, database_name: str
) -> None:
    records = mongo[database_name]["participant_outcomes"]
    retention = timedelta(hours=3)
    async with make_inventory(record_retention=retention):
        ttl = [i for i in (await records.index_information()).values() if "expireAfterSeconds" in i]
        assert [(i["key"], i["expireAfterSeconds"]) for i in ttl] == [([("expires_at", 1)], 0)]
        since = datetime.now(UTC) - timedelta(milliseconds=1)
        done = await broker.send("reserve_stock", {"order_id": "o-12"})
        await reply_of(broker)
        compensated = await broker.send("release_stock", {}, kind="compensation")
        await reply_of(broker)
        until = datetime.now(UTC)
        for key in (f"{done}:reserve:action", f"{compensated}:reserve:action"):
            record = await records.find_one({"_id": key})
            assert record["status"] in ("succeeded", "failed")
            expires_at = record["expires_at"].replace(tzinfo=UTC)
            assert since + retention <= expires_at <= until + retention
    # Another retention on the next run starts fine (the index does not depend on it); the
    # records it finishes are kept forever.
    async with make_inventory(record_retention=None):
        saga_id = await broker.send("reserve_stock", {"order_id": "o-13"})
        await reply_of(broker)
        record = await records.find_one({"_id": f"{saga_id}:reserve:action"})
        assert record["status"] == "succeeded"
        assert "expires_at" not in record
