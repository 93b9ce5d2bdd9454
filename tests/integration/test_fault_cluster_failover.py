"""A three-node RabbitMQ cluster (nodes started by the test on ports of their own, joined
with ``rabbitmqctl join_cluster``): the node the coordinator is connected to is stopped in
the middle of a run.

The coordinator and the SDK participants are given every node in ``SAGA_AMQP_URL``,
comma-separated (SPEC §6); they fail over to a node that is still up. The queues are quorum
queues with a replica on every node, so the two remaining nodes keep every message. Every
saga completes, none is lost, no action runs twice for one idempotency key (SPEC §4)."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
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
from tests.integration.rabbit_nodes import RabbitNode, own_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800 if FULL else 240)]

SAGAS = 500 if FULL else 150


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[RabbitNode]]:
    """Three nodes of this test's own, clustered; all stopped at the end."""
    yield from own_cluster(tmp_path / "rabbit")


@pytest.fixture
def amqp_url(cluster: list[RabbitNode]) -> str:
    """Every node of the cluster, as SPEC §6 lets ``SAGA_AMQP_URL`` list them."""
    return ",".join(node.url for node in cluster)


def connections_by_node(cluster: list[RabbitNode], ask: RabbitNode) -> Counter[str]:
    """How many client connections each node serves, from the server port in their names."""
    output = ask.ctl("list_connections", "-q", "--no-table-headers", "name")
    ports = Counter(int(port) for port in re.findall(r"-> [\d.:\[\]a-f]*:(\d+)", output))
    return Counter({node.name: ports[node.port] for node in cluster if ports[node.port]})


async def test_stopping_the_connected_cluster_node_fails_over_and_loses_nothing(
    cluster: list[RabbitNode],
    coordinators: Callable[..., Coordinator],
    fault_workload: Callable[..., Workload],
    mongodb_url: str,
    prefix: str,
) -> None:
    figures = Figures("cluster node stopped")
    run = fault_workload(SAGAS, delay=1.0)  # FAULT_DEFINITION, its participants a and b
    coordinator = coordinators(SAGA_MONGODB_URL=pooled(mongodb_url)).start()
    async with running(run.a, run.b):
        await coordinator.wait_ready()
        before = await asyncio.to_thread(connections_by_node, cluster, cluster[-1])
        # The coordinator and both participants' connections.
        assert sum(before.values()) >= 3, before
        [(victim_name, _)] = before.most_common(1)
        victim = next(node for node in cluster if node.name == victim_name)
        survivors = [node for node in cluster if node is not victim]
        connection = await aio_pika.connect(survivors[0].url)
        try:
            began = time.monotonic()
            await publish_orders(Broker(await connection.channel(), prefix), run.keys)
        finally:
            await connection.close()
        await run.counts.wait_for("completed", SAGAS // 20, within=60, what="the first completions")
        in_flight = SAGAS - await run.counts.count("completed")
        await asyncio.to_thread(victim.stop)
        stopped = time.monotonic()
        figures.faults += 1
        try:
            done = await run.counts.wait_all_terminal(SAGAS, within=240)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ncoordinator log:\n{coordinator.log()[-4000:]}") from exc
        after = await asyncio.to_thread(connections_by_node, cluster, survivors[0])
        figures.seconds_to_all_terminal = done - began
        figures.seconds_after_last_fault = done - stopped
        figures.notes["not completed when the stop began"] = in_flight
        figures.notes["connections per node before, after"] = [dict(before), dict(after)]
        assert coordinator.proc is not None and coordinator.proc.poll() is None, coordinator.log()
    judge(figures, run.keys, await run.counts.all(), run.recorder)
    assert in_flight >= SAGAS // 4, f"the node stopped too late: {in_flight} in flight"
    # The clients now run on the surviving nodes.
    assert victim.name not in after and sum(after.values()) >= 3, after
    assert await coordinator.terminate() == 0, coordinator.log()[-4000:]
