"""Losing the broker connections: ``rabbitmqctl close_all_connections`` while sagas are in
flight. The broker itself keeps running (its queues and messages stay), but every client
connection is force-closed: the coordinator's, the participants' and the test's own.

The coordinator and the participant SDK use robust aio-pika connections: they reconnect and
restore their channels and consumers. Deliveries that were in flight on a closed channel are
requeued by the broker and handled again; publishes that lost their confirm are retried (the
coordinator's relay republishes its outbox). Every saga still finishes, none fails, each
action runs once per idempotency key at the participants (SPEC §4), and the coordinator
stays up, ready, and stops cleanly on SIGTERM.

The test closes every connection of the broker's default virtual host, so it is skipped when
``SAGA_TEST_AMQP_URL`` names a broker other than the local one, or when ``rabbitmqctl`` is
not on ``PATH``."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aio_pika
import pytest

from participants import Participant
from tests.integration.helpers import (
    LOAD,
    TERMINAL,
    Broker,
    Coordinator,
    Recorder,
    Sagas,
    history_events,
    local_rabbitmqctl,
    rabbitmqctl,
    running,
    succeeding,
    write,
)

pytestmark = pytest.mark.integration


def _connection_names(exe: str) -> set[str]:
    output = rabbitmqctl(exe, "-q", "--no-table-headers", "list_connections", "name")
    return {line.strip() for line in output.splitlines() if line.strip()}


async def test_losing_every_broker_connection_finishes_every_saga_once(
    amqp_url: str,
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    ctl = local_rabbitmqctl(amqp_url)
    write(definitions_dir, "load", LOAD)
    total = 60
    recorder = Recorder()
    a, b = participants("a"), participants("b")
    a.action("reserve")(succeeding(recorder, delay=1.0))
    a.compensation("release")(succeeding(recorder))
    b.action("charge")(succeeding(recorder, delay=1.0))
    coordinator = coordinators().start()
    async with running(a, b):
        await coordinator.wait_ready()
        names_before = await asyncio.to_thread(_connection_names, ctl)
        # The coordinator, the two participants and the test itself are connected.
        assert len(names_before) >= 4, names_before
        await asyncio.gather(
            *(broker.event("order.placed", {"order_id": f"o-{n}"}) for n in range(total))
        )
        await sagas.wait(
            lambda docs: sum(d["status"] == "completed" for d in docs) >= 5,
            within=30,
            what="the first completions",
        )
        await asyncio.to_thread(rabbitmqctl, ctl, "close_all_connections", "test")
        # Taken after the close: a saga not terminal here was in flight when it happened.
        after_close = await sagas.all()
        await asyncio.sleep(2.0)
        assert coordinator.proc is not None and coordinator.proc.poll() is None, (
            f"the coordinator died with its connection:\n{coordinator.log()[-4000:]}"
        )
        try:
            docs = await sagas.wait_terminal(total, within=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ncoordinator log:\n{coordinator.log()[-4000:]}") from exc
        # Every connection that existed before is gone: the clients run on new ones.
        names_after = await asyncio.to_thread(_connection_names, ctl)
        assert not names_before & names_after, names_before & names_after
        assert coordinator.proc.poll() is None, (
            f"the coordinator exited:\n{coordinator.log()[-4000:]}"
        )
        await coordinator.wait_ready(within=30)
        # A fresh connection of the test: the broker still routes to the restored consumers.
        connection = await aio_pika.connect_robust(amqp_url)
        try:
            fresh = Broker(await connection.channel(), broker.prefix)
            await fresh.event("order.placed", {"order_id": "after"})
            docs = await sagas.wait_terminal(total + 1, within=30)
        finally:
            await connection.close()
    statuses = Counter(doc["status"] for doc in docs)
    assert len(docs) == total + 1, statuses
    assert statuses["failed"] == 0, statuses
    assert set(statuses) <= set(TERMINAL), statuses
    for doc in docs:
        events = Counter(history_events(doc))
        assert events["saga.started"] == 1, events
    # Every action ran at most once per idempotency key at the participants.
    repeated = {key: n for key, n in recorder.executions.items() if n > 1}
    assert not repeated, repeated
    actions = [key for key in recorder.executions if key.endswith(":action")]
    assert len(actions) >= 2 * statuses["completed"], len(actions)
    in_flight = sum(d["status"] not in TERMINAL for d in after_close)
    assert in_flight >= 10, f"the connections were closed too late: {in_flight} in flight"
    assert await coordinator.terminate() == 0, coordinator.log()[-4000:]
