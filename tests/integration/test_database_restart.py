"""A crash of the database: ``kill -9`` of MongoDB while sagas are in flight, then a restart
on the same port and storage. The coordinator keeps running (a ``StoreUnavailable`` is
retried, never fatal) and every saga still finishes, each action executed once (SPEC §4).

The test runs its own SecantusDB process on disk (the session's server is in memory and
shared), so it is skipped when ``SAGA_TEST_MONGODB_URL`` names an external server.

The server runs with its default durability: the coordinator and the participant SDK ask
for journaled writes (``j: true``), so a write acknowledged before the ``kill -9`` survives
it. With the default write concern (``w: 1`` only) a hard crash lost acknowledged writes
and some actions ran twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from participants import Participant
from tests.integration.helpers import (
    LOAD,
    TERMINAL,
    Broker,
    Coordinator,
    DatabaseServer,
    Recorder,
    Sagas,
    history_events,
    running,
    succeeding,
    write,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def mongodb_url(database_server: DatabaseServer) -> str:
    """This test's own server: the coordinator, participants and the test all use it."""
    return database_server.url


async def test_kill_9_of_the_database_then_restart_finishes_every_saga_once(
    database_server: DatabaseServer,
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "load", LOAD)
    total = 60
    recorder = Recorder()
    a, b = participants("a"), participants("b")
    a.action("reserve")(succeeding(recorder, delay=0.3))
    a.compensation("release")(succeeding(recorder))
    b.action("charge")(succeeding(recorder, delay=0.3))
    # A short server selection timeout: during the outage the coordinator's store calls fail
    # with StoreUnavailable (retried) instead of waiting 30 s for the server to come back.
    coordinator = coordinators(
        SAGA_MONGODB_URL=f"{database_server.url}&serverSelectionTimeoutMS=500"
    ).start()
    async with running(a, b):
        await coordinator.wait_ready()
        await asyncio.gather(
            *(broker.event("order.placed", {"order_id": f"o-{n}"}) for n in range(total))
        )
        await sagas.wait(
            lambda docs: sum(d["status"] == "completed" for d in docs) >= 5,
            within=30,
            what="the first completions",
        )
        before = await sagas.all()
        database_server.kill()
        await asyncio.sleep(2.0)
        assert coordinator.proc is not None and coordinator.proc.poll() is None, (
            f"the coordinator died with the database:\n{coordinator.log()[-4000:]}"
        )
        await asyncio.to_thread(database_server.start)
        try:
            docs = await sagas.wait_terminal(total, within=40)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ncoordinator log:\n{coordinator.log()[-4000:]}") from exc
        assert coordinator.proc.poll() is None, (
            f"the coordinator exited:\n{coordinator.log()[-4000:]}"
        )
    statuses = Counter(doc["status"] for doc in docs)
    assert len(docs) == total, statuses
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
    done_before = sum(d["status"] in TERMINAL for d in before)
    assert done_before < total, "the kill came too late to test anything"
    assert "MongoDB failed" in coordinator.log(), "the coordinator never saw the outage"
    assert await coordinator.terminate() == 0
