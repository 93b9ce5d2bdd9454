"""Several brokers in ``SAGA_AMQP_URL``, and a broker that stops answering, through TCP
proxies in front of the machine's RabbitMQ (``tcp_proxy``): the broker itself is never
touched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import pytest

from coordinator.adapters.rabbit import RabbitBroker
from coordinator.engine.state import Command
from coordinator.errors import BrokerUnavailable
from participants import Participant
from schemas.brokers import FailoverConnection, connect
from tests.integration.helpers import (
    Broker,
    Coordinator,
    Recorder,
    Sagas,
    running,
    succeeding,
    write,
)
from tests.integration.tcp_proxy import Proxy

pytestmark = pytest.mark.integration

DEFINITION = """
name: relay
version: 1
trigger: {event: relay.go, key: "${event.id}"}
defaults: {timeout: 10s}
steps:
  - name: only
    participant: a
    command: do
"""


async def test_a_lost_broker_is_left_for_the_next_url() -> None:
    first, second = await Proxy().start(), await Proxy().start()
    connection = await connect([first.url(), second.url()], reconnect_interval=0.2)
    try:
        assert isinstance(connection, FailoverConnection)
        assert connection.current_url == first.url()
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await first.stop()  # the node goes away
        deadline = time.monotonic() + 20
        while not (connection.connected.is_set() and connection.current_url == second.url()):
            assert time.monotonic() < deadline, "no failover to the second broker"
            await asyncio.sleep(0.1)
        await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue.name)
        deadline = time.monotonic() + 10
        while (message := await queue.get(no_ack=True, fail=False)) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert message.body == b"after"
    finally:
        await connection.close()
        await second.stop()


async def test_no_broker_answering_fails_the_connect() -> None:
    broker = RabbitBroker("amqp://guest:guest@127.0.0.1:1/,amqp://guest:guest@127.0.0.1:2/")
    with pytest.raises(BrokerUnavailable, match="connect failed"):
        await broker.connect()


async def test_a_confirm_that_never_comes_times_out(prefix: str, broker: Broker) -> None:
    proxy = await Proxy().start()
    broker = RabbitBroker(proxy.url(), prefix=prefix, publish_timeout=0.5)
    await broker.connect()
    command = Command(
        message_id="m-1",
        routing_key="nobody.do",
        type="do",
        reply_to="coordinator",
        timestamp=datetime.now(UTC),
        headers={
            "x-saga-id": "s",
            "x-saga-step": "only",
            "x-saga-kind": "action",
            "x-saga-attempt": 1,
        },
        body={},
    )
    try:
        proxy.freeze()  # the broker stops answering: no confirm comes back
        with pytest.raises(BrokerUnavailable, match="publish"):
            await asyncio.wait_for(broker.publish_commands([command]), 20)
    finally:
        await proxy.stop()
        await broker.close()


async def test_the_coordinator_fails_over_to_the_next_broker(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    first, second = await Proxy().start(), await Proxy().start()
    write(definitions_dir, "relay", DEFINITION)
    coordinator = coordinators(SAGA_AMQP_URL=f"{first.url()},{second.url()}").start()
    a = participants("a")
    a.action("do")(succeeding(Recorder()))
    try:
        async with running(a):
            await coordinator.wait_ready()
            await broker.event("relay.go", {"id": "before"})
            await sagas.wait_terminal(1, within=20)
            await first.stop()
            await broker.event("relay.go", {"id": "after"})
            docs = await sagas.wait_terminal(2, within=60)
        assert {d["status"] for d in docs} == {"completed"}
        assert (await coordinator.terminate()) == 0
    finally:
        await second.stop()
