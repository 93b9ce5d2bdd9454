"""Three coordinator replicas on the same queues (on a RabbitMQ node of the test's own) and
database; one after the other is killed with ``kill -9`` and started again, over and over,
while the sagas run.

A killed replica's unacknowledged messages are redelivered to the others, its timers are
claimed by another once their lease expires, and the relay republishes what it saved but
did not publish. Every saga completes, none is lost, no action runs twice for one
idempotency key (SPEC §4).

That the replicas really shared the work is read from each one's ``saga_transitions_total``
(its own counter of transitions it persisted), scraped just before each kill and before the
survivors stop: each replica slot persisted a real share, and together they account for no
more than the transitions the sagas' revisions record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.faults import (
    FULL,
    Figures,
    Workload,
    judge,
    persisted_transitions,
    pooled,
    publish_orders,
    transitions_of,
)
from tests.integration.helpers import TERMINAL, Broker, Coordinator, running
from tests.integration.rabbit_nodes import own_node

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800 if FULL else 240)]


@pytest.fixture
def amqp_url(tmp_path: Path) -> Iterator[str]:
    """A RabbitMQ node of this test's own: nothing else on the machine's broker disturbs the
    run (another test closing every connection of the machine's broker, say)."""
    for node in own_node(tmp_path / "rabbit"):
        yield node.url


REPLICAS = 3
SAGAS = 1000 if FULL else 200
KILLS = 12 if FULL else 3
#: Seconds between publishing a wave of orders and the next kill.
PAUSE = 1.0


async def test_replicas_killed_again_and_again_lose_no_saga_and_share_the_work(
    coordinators: Callable[..., Coordinator],
    fault_workload: Callable[..., Workload],
    mongodb_url: str,
    prefix: str,
    broker: Broker,
) -> None:
    figures = Figures("replica kill -9")
    run = fault_workload(SAGAS, delay=0.5)  # FAULT_DEFINITION, its participants a and b
    # The timers' lease is short so that a killed replica's claims pass on quickly; their
    # polls are not the helpers' 0.1 s, to spare the test database.
    env = {"SAGA_TIMER_LEASE": "3", "SAGA_TIMER_INTERVAL": "0.5"}
    make = lambda: coordinators(SAGA_MONGODB_URL=pooled(mongodb_url), **env)  # noqa: E731
    replicas = [make().start() for _ in range(REPLICAS)]
    persisted_by = [0] * REPLICAS  # per replica slot, over its incarnations
    in_flight_at_kills: list[int] = []
    async with running(run.a, run.b):
        await asyncio.gather(*(replica.wait_ready() for replica in replicas))
        began = last_fault = time.monotonic()
        # The orders arrive in waves, one before each kill, so that every kill hits a run.
        waves = [run.keys[n::KILLS] for n in range(KILLS)]
        for kill, wave in enumerate(waves):
            await publish_orders(broker, wave)
            await asyncio.sleep(PAUSE)
            slot = kill % REPLICAS
            victim = replicas[slot]
            persisted_by[slot] += await transitions_of(victim)
            victim.kill()
            figures.faults += 1
            in_flight_at_kills.append(await run.counts.count() - await run.counts.count(TERMINAL))
            replicas[slot] = make().start()
            await replicas[slot].wait_ready(within=300)
            last_fault = time.monotonic()
        try:
            done = await run.counts.wait_all_terminal(SAGAS, within=300)
        except AssertionError as exc:
            logs = "\n".join(replica.log()[-2000:] for replica in replicas)
            raise AssertionError(f"{exc}\nreplica logs:\n{logs}") from exc
        figures.seconds_to_all_terminal = done - began
        figures.seconds_after_last_fault = done - last_fault
        for slot, replica in enumerate(replicas):
            persisted_by[slot] += await transitions_of(replica)
    docs = await run.counts.all()
    total = persisted_transitions(docs)
    figures.notes["transitions per replica"] = persisted_by
    figures.notes["transitions persisted"] = total
    figures.notes["in flight at each kill"] = in_flight_at_kills
    judge(figures, run.keys, docs, run.recorder)
    assert min(in_flight_at_kills) > 0, f"a kill came after the run: {in_flight_at_kills}"
    # The counters cover the transitions each replica persisted up to its last scrape.
    assert sum(persisted_by) <= total, (persisted_by, total)
    for slot, share in enumerate(persisted_by):
        assert share >= total // 10, f"replica {slot} persisted {share} of {total} transitions"
    for replica in replicas:
        assert await replica.terminate() == 0, replica.log()[-4000:]
