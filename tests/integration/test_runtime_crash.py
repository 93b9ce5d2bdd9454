"""Crashes and replicas: ``kill -9`` under load, two coordinators on the same queues, and a
timer that comes due while no coordinator runs."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from participants import Participant
from tests.integration.faults import persisted_transitions, transitions_of
from tests.integration.helpers import (
    LOAD,
    Broker,
    Coordinator,
    Recorder,
    Sagas,
    history_events,
    running,
    succeeding,
    write,
)

pytestmark = pytest.mark.integration


def assert_each_saga_ran_once(docs: list[dict[str, Any]], recorder: Recorder) -> None:
    for doc in docs:
        events = Counter(history_events(doc))
        assert doc["status"] == "completed", events
        assert events["saga.started"] == 1 and events["saga.completed"] == 1, events
        assert events["action.succeeded"] == 2, events
    assert len(recorder.executions) == 2 * len(docs)
    assert set(recorder.executions.values()) == {1}, recorder.executions.most_common(3)


async def test_kill_9_under_load_then_restart_finishes_every_saga_once(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "load", LOAD)
    total = 200
    recorder = Recorder()
    a, b = participants("a"), participants("b")
    a.action("reserve")(succeeding(recorder))
    a.compensation("release")(succeeding(recorder))
    b.action("charge")(succeeding(recorder))
    first = coordinators().start()
    async with running(a, b):
        await first.wait_ready()
        await asyncio.gather(
            *(broker.event("order.placed", {"order_id": f"o-{n}"}) for n in range(total))
        )
        await sagas.wait(
            lambda docs: sum(d["status"] == "completed" for d in docs) >= 10,
            within=30,
            what="the first completions",
        )
        first.kill()
        done_before = sum(d["status"] == "completed" for d in await sagas.all())
        second = coordinators().start()
        await second.wait_ready()
        docs = await sagas.wait_terminal(total, within=90)
    assert done_before < total, "the kill came too late to test anything"
    assert len(docs) == total
    assert_each_saga_ran_once(docs, recorder)
    assert await second.terminate() == 0


async def test_two_coordinators_share_the_work(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "load", LOAD)
    total = 100
    recorder = Recorder()
    a, b = participants("a"), participants("b")
    a.action("reserve")(succeeding(recorder))
    b.action("charge")(succeeding(recorder))
    one, two = coordinators().start(), coordinators().start()
    async with running(a, b):
        await asyncio.gather(one.wait_ready(), two.wait_ready())
        await asyncio.gather(
            *(broker.event("order.placed", {"order_id": f"o-{n}"}) for n in range(total))
        )
        docs = await sagas.wait_terminal(total, within=60)
    assert len(docs) == total
    assert_each_saga_ran_once(docs, recorder)
    # Each replica's own count of the transitions it persisted: both took a real share, and
    # together (nearly: a save won but reported lost is not counted) the transitions the sagas'
    # revisions record, starts included.
    shares = [await transitions_of(one), await transitions_of(two)]
    total_transitions = persisted_transitions(docs)
    assert sum(shares) <= total_transitions, (shares, total_transitions)
    assert sum(shares) >= 0.95 * total_transitions, (shares, total_transitions)
    assert min(shares) >= total_transitions // 10, (shares, total_transitions)
    assert await one.terminate() == 0
    assert await two.terminate() == 0


DOWN = """
name: down
version: 1
trigger: {event: order.placed, key: "${event.order_id}"}
steps:
  - name: reserve
    participant: a
    command: reserve
    timeout: 10s
    compensation: {command: release}
  - name: charge
    participant: b
    command: charge
    timeout: 1s
    retry: {max_attempts: 1}
"""


async def test_a_timer_due_while_down_fires_after_restart(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "down", DOWN)
    recorder = Recorder()
    a = participants("a")  # "b" never answers: the charge attempt can only time out
    a.action("reserve")(succeeding(recorder))
    a.compensation("release")(succeeding(recorder))
    first = coordinators().start()
    async with running(a):
        await first.wait_ready()
        await broker.silent_participant("b")  # routed, so not returned as unavailable
        await broker.event("order.placed", {"order_id": "o-1"})
        await sagas.wait(
            lambda d: len(d) == 1 and d[0]["steps"][1]["status"] == "running",
            within=15,
            what="the charge step running",
        )
        first.kill()
        await asyncio.sleep(2.0)  # the charge attempt's deadline passes meanwhile
        [doc] = await sagas.all()
        assert doc["status"] == "running" and doc["steps"][1]["status"] == "running"
        second = coordinators().start()
        await second.wait_ready()
        [doc] = await sagas.wait_terminal(1, within=20)
    assert doc["status"] == "compensated", history_events(doc)
    assert doc["reason"]["code"] == "attempt_timeout"
    assert [s["status"] for s in doc["steps"]] == ["compensated", "timed_out"]
    assert await second.terminate() == 0
