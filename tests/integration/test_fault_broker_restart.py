"""A full RabbitMQ restart in the middle of a run: the node (the test's own, on ports of its
own) is stopped with ``rabbitmqctl stop`` while sagas are in flight, and started again.

The coordinator and the SDK participants lose their connections, reconnect to the node once
it is back, and find their durable quorum queues and persistent messages there. Every saga
completes, none is lost, and no action runs twice for one idempotency key (SPEC §4)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aio_pika
import pytest

from tests.integration.faults import (
    FULL,
    Figures,
    Workload,
    judge,
    pooled,
    publish_orders,
)
from tests.integration.helpers import Broker, Coordinator, running
from tests.integration.rabbit_nodes import RabbitNode, own_node

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800 if FULL else 240)]

SAGAS = 500 if FULL else 150


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RabbitNode]:
    """A RabbitMQ node of this test's own, stopped at the end whatever happens."""
    yield from own_node(tmp_path / "rabbit")


@pytest.fixture
def amqp_url(node: RabbitNode) -> str:
    """Everything of this test connects to its own node."""
    return node.url


async def test_a_full_broker_restart_loses_no_saga_and_repeats_no_action(
    node: RabbitNode,
    amqp_url: str,
    coordinators: Callable[..., Coordinator],
    fault_workload: Callable[..., Workload],
    mongodb_url: str,
    prefix: str,
) -> None:
    figures = Figures("broker restart")
    run = fault_workload(SAGAS, delay=0.5)  # FAULT_DEFINITION, its participants a and b
    coordinator = coordinators(SAGA_MONGODB_URL=pooled(mongodb_url)).start()
    async with running(run.a, run.b):
        await coordinator.wait_ready()
        connection = await aio_pika.connect(amqp_url)
        try:
            began = time.monotonic()
            await publish_orders(Broker(await connection.channel(), prefix), run.keys)
        finally:
            await connection.close()
        await run.counts.wait_for("completed", SAGAS // 20, within=60, what="the first completions")
        in_flight = SAGAS - await run.counts.count("completed")
        await asyncio.to_thread(node.stop)
        figures.faults += 1
        await asyncio.sleep(2.0)  # the clients notice, and retry against a node that is down
        await asyncio.to_thread(node.start)
        await asyncio.to_thread(node.wait_ready)
        back = time.monotonic()
        try:
            done = await run.counts.wait_all_terminal(SAGAS, within=240)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ncoordinator log:\n{coordinator.log()[-4000:]}") from exc
        figures.seconds_to_all_terminal = done - began
        figures.seconds_after_last_fault = done - back
        figures.notes["not completed when the stop began"] = in_flight
        assert coordinator.proc is not None and coordinator.proc.poll() is None, coordinator.log()
    judge(figures, run.keys, await run.counts.all(), run.recorder)
    assert in_flight >= SAGAS // 4, f"the broker stopped too late: {in_flight} in flight"
    assert await coordinator.terminate() == 0, coordinator.log()[-4000:]
