"""The taxonomy of ``schemas.consuming`` on a real queue, and the trigger binding sync of
``RabbitBroker``: the parts the end-to-end tests reach only indirectly."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from coordinator.adapters.rabbit import RabbitBroker
from coordinator.errors import StoreUnavailable
from schemas.consuming import Consumer, RetryPolicy
from schemas.envelope import HEADER_REJECTION
from schemas.topology import declare_exchanges
from tests.integration.helpers import Broker

pytestmark = pytest.mark.integration


class Rig:
    """One queue consumed through a ``Consumer``, and the dead-letter queue."""

    def __init__(self, broker: Broker, queue: AbstractQueue, dead: AbstractQueue) -> None:
        self.broker, self.queue, self.dead = broker, queue, dead
        self.tag = ""

    async def consume(self, handle: Any, *, decode: Any = lambda m: m.body) -> Consumer:
        declared = await declare_exchanges(self.broker.channel, self.broker.exchanges)
        consumer = Consumer(
            self.queue.name,
            "test",
            dead_letter=declared.dead_letter,
            default_exchange=self.broker.channel.default_exchange,
            transient=lambda exc: isinstance(exc, StoreUnavailable),
            policy=RetryPolicy(max_tries=3, delay=0.05, max_delay=0.2),
        )

        async def on_message(message: AbstractIncomingMessage) -> None:
            await consumer.deliver(message, decode, handle)

        self.tag = await self.queue.consume(on_message)
        return consumer

    async def send(self, body: bytes) -> None:
        await self.broker.channel.default_exchange.publish(
            aio_pika.Message(body, message_id=body.decode()), routing_key=self.queue.name
        )


@pytest.fixture
async def rig(broker: Broker) -> AsyncIterator[Rig]:
    channel = broker.channel
    declared = await declare_exchanges(channel, broker.exchanges)
    queue = await channel.declare_queue(f"{broker.prefix}.rig", durable=True)
    dead = await channel.declare_queue(f"{broker.prefix}.rig-dead", durable=True)
    await dead.bind(declared.dead_letter)
    yield Rig(broker, queue, dead)
    await channel.queue_delete(queue.name)
    await channel.queue_delete(dead.name)


async def eventually(condition: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_message_is_held_while_a_dependency_is_down_then_goes_through(rig: Rig) -> None:
    calls: list[float] = []

    async def handle(body: bytes) -> None:
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise StoreUnavailable("MongoDB did not answer")

    await rig.consume(handle)
    await rig.send(b"held")
    await eventually(lambda: len(calls) == 4)
    await asyncio.sleep(0.3)
    assert len(calls) == 4  # resumed by itself, not counted as tries, not dead-lettered
    pauses = [b - a for a, b in itertools.pairwise(calls)]
    assert all(p > 0.02 for p in pauses)  # a pause each time (a lower bound): no hot loop
    assert await rig.dead.get(no_ack=True, fail=False) is None
    declared = await rig.broker.channel.declare_queue(rig.queue.name, passive=True)
    assert declared.declaration_result.message_count == 0


async def test_a_held_message_goes_back_to_the_queue_on_shutdown(rig: Rig) -> None:
    calls = 0

    async def handle(body: bytes) -> None:
        nonlocal calls
        calls += 1
        raise StoreUnavailable("MongoDB did not answer")

    consumer = await rig.consume(handle)
    await rig.send(b"held")
    await eventually(lambda: calls >= 2)
    consumer.stopping = True  # as RabbitBroker.stop_consuming and Participant.stop do
    await rig.queue.cancel(rig.tag)
    await asyncio.sleep(0.5)
    assert await rig.dead.get(no_ack=True, fail=False) is None
    back = await rig.queue.get(no_ack=True, fail=False)  # given back, uncounted
    assert back is not None and back.body == b"held"
    assert "x-saga-tries" not in (back.headers or {})


async def test_a_bug_in_decoding_is_tried_a_bounded_number_of_times(rig: Rig) -> None:
    def decode(message: AbstractIncomingMessage) -> bytes:
        raise KeyError("a bug in the decoder")

    async def handle(body: bytes) -> None:
        raise AssertionError("not reached")

    await rig.consume(handle, decode=decode)
    await rig.send(b"doomed")
    deadline = time.monotonic() + 10
    while (dead := await rig.dead.get(no_ack=True, fail=False)) is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (
        str((dead.headers or {})[HEADER_REJECTION])
        == "failed 3 tries; last error: KeyError('a bug in the decoder')"
    )
    assert dead.routing_key == rig.queue.name and dead.body == b"doomed"


async def test_binding_sync_unbinds_what_an_earlier_run_bound(
    amqp_url: str, prefix: str, broker: Broker
) -> None:
    first = RabbitBroker(amqp_url, prefix=prefix)
    await first.connect()
    await first.bind_events({"a.go", "b.go"})
    await first.close()
    second = RabbitBroker(amqp_url, prefix=prefix)  # a restart: it knows of no binding
    await second.connect()
    try:
        await second.bind_events({"b.go"}, known={"a.go", "b.go"})
        for event_type in ("a.go", "b.go"):
            await broker.event(event_type, {"id": event_type}, message_id=event_type)
        unrouted = await broker.channel.get_queue(f"{prefix}.unrouted")
        events = await broker.channel.get_queue(f"{prefix}.coordinator.events")
        deadline = time.monotonic() + 10
        kept = got = None
        while (kept is None or got is None) and time.monotonic() < deadline:
            kept = kept or await unrouted.get(no_ack=True, fail=False)
            got = got or await events.get(no_ack=True, fail=False)
            await asyncio.sleep(0.05)
        assert kept is not None and kept.message_id == "a.go"  # unbound
        assert got is not None and got.message_id == "b.go"  # still bound
    finally:
        await second.close()
