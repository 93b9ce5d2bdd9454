"""The coordinator end to end: ``python -m coordinator run`` as a subprocess, real RabbitMQ,
a MongoDB-wire server, participants built with the SDK in the test process.

Each test writes its definitions (short timeouts), starts the coordinator, publishes
trigger events and polls the database until every saga is terminal (bounded waits).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from participants import Delivery, Participant, RetryableError, StepError
from tests.integration.helpers import (
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

TWO_STEPS = """
name: two-steps
version: 1
trigger: {event: order.placed, key: "${event.order_id}"}
defaults:
  timeout: 5s
  retry: {max_attempts: 3, backoff: 200ms, multiplier: 1.0, max_backoff: 1s}
steps:
  - name: reserve
    participant: a
    command: reserve
    input: {order_id: "${input.order_id}"}
    compensation: {command: release, input: {id: "${steps.reserve.output.id}"}}
  - name: charge
    participant: b
    command: charge
    input: {order_id: "${input.order_id}", amount: "${input.amount}"}
"""


async def test_happy_path(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "two-steps", TWO_STEPS)
    (definitions_dir / "notes.txt").write_text("not a definition")
    write(definitions_dir, "broken", "name: Broken\nversion: 0\nsteps: []\n")
    coordinator = coordinators().start()
    recorder = Recorder()
    a, b = participants("a"), participants("b")
    a.action("reserve")(succeeding(recorder))
    b.action("charge")(succeeding(recorder, {"charge_id": "c-1"}))
    async with running(a, b):
        await coordinator.wait_ready()
        await broker.event("order.placed", {"order_id": "o-1", "amount": 12})
        [doc] = await sagas.wait_terminal(1, within=20)
    assert doc["status"] == "completed", history_events(doc)
    assert doc["key"] == "o-1"
    assert [s["status"] for s in doc["steps"]] == ["succeeded", "succeeded"]
    assert doc["steps"][1]["output"] == {"charge_id": "c-1"}
    assert doc["outbox"] == [] or await _outbox_cleared(sagas, doc["_id"])
    assert set(recorder.executions.values()) == {1}
    assert "definitions/broken.yaml" in coordinator.log()  # logged, and the service ran on
    async with httpx.AsyncClient(base_url=coordinator.url, timeout=5) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).json()["status"] == "ready"
        served = await http.get(f"/v1/sagas/{doc['_id']}")  # the REST API is mounted
        assert served.status_code == 200 and served.json()["status"] == "completed"
    assert await coordinator.terminate() == 0


async def _outbox_cleared(sagas: Sagas, saga_id: str, within: float = 5.0) -> bool:
    for _ in range(int(within / 0.1)):
        doc = await sagas.get(saga_id)
        if doc is not None and doc["outbox"] == []:
            return True
        await asyncio.sleep(0.1)
    return False


THREE_STEPS = """
name: three-steps
version: 1
trigger: {event: trip.booked, key: "${event.id}"}
defaults:
  timeout: 5s
  retry: {max_attempts: 3, backoff: 200ms, multiplier: 1.0, max_backoff: 1s}
steps:
  - name: reserve
    participant: a
    command: reserve
    compensation: {command: release}
  - name: charge
    participant: b
    command: charge
    compensation: {command: refund}
  - name: ship
    participant: c
    command: ship
    compensation: {command: unship}
"""


async def test_non_retryable_failure_compensates_in_reverse_order(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "three-steps", THREE_STEPS)
    coordinator = coordinators().start()
    recorder = Recorder()
    a, b, c = participants("a"), participants("b"), participants("c")
    a.action("reserve")(succeeding(recorder))
    a.compensation("release")(succeeding(recorder))
    b.action("charge")(succeeding(recorder))
    b.compensation("refund")(succeeding(recorder))

    @c.action("ship")
    async def ship(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        recorder.note(delivery)
        raise StepError("no_address", "the address is unknown")

    c.compensation("unship")(succeeding(recorder))
    async with running(a, b, c):
        await coordinator.wait_ready()
        await broker.event("trip.booked", {"id": "t-1"})
        [doc] = await sagas.wait_terminal(1, within=20)
    assert doc["status"] == "compensated", history_events(doc)
    assert [(step, kind) for _, step, kind, _ in recorder.order] == [
        ("reserve", "action"),
        ("charge", "action"),
        ("ship", "action"),
        ("charge", "compensation"),
        ("reserve", "compensation"),
    ]
    assert [s["status"] for s in doc["steps"]] == ["compensated", "compensated", "failed"]
    assert doc["reason"]["code"] == "no_address"


async def test_retryable_failure_then_success_with_the_same_key(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "two-steps", TWO_STEPS)
    coordinator = coordinators().start()
    recorder = Recorder()
    a, b = participants("a"), participants("b")
    a.action("reserve")(succeeding(recorder))

    @b.action("charge")
    async def charge(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        recorder.note(delivery)
        if delivery.attempt == 1:
            raise RetryableError("gateway_busy", "try again")
        return {"charge_id": "c-2"}

    async with running(a, b):
        await coordinator.wait_ready()
        await broker.event("order.placed", {"order_id": "o-2", "amount": 5})
        [doc] = await sagas.wait_terminal(1, within=20)
    assert doc["status"] == "completed", history_events(doc)
    charges = [entry for entry in recorder.order if entry[1] == "charge"]
    assert [attempt for *_, attempt in charges] == [1, 2]
    assert recorder.executions[f"{doc['_id']}:charge:action"] == 2  # one key, two attempts
    assert doc["steps"][1]["action"]["attempt"] == 2
    assert doc["steps"][1]["output"] == {"charge_id": "c-2"}


TIMEOUT_STEP = """
name: slow-step
version: 1
trigger: {event: order.placed, key: "${event.order_id}"}
steps:
  - name: reserve
    participant: a
    command: reserve
    timeout: 5s
    compensation: {command: release}
  - name: charge
    participant: b
    command: charge
    timeout: 1s
    retry: {max_attempts: 1}
    compensation:
      command: refund
      retry: {max_attempts: 20, backoff: 300ms, multiplier: 1.0}
"""


async def test_step_timeout_compensates_the_timed_out_step_too(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "slow-step", TIMEOUT_STEP)
    coordinator = coordinators().start()
    recorder = Recorder()
    a, b = participants("a"), participants("b")
    a.action("reserve")(succeeding(recorder))
    a.compensation("release")(succeeding(recorder))

    @b.action("charge")
    async def charge(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        recorder.note(delivery)
        await asyncio.sleep(2.0)  # the coordinator stops waiting after 1s
        return {"charge_id": "late"}

    b.compensation("refund")(succeeding(recorder))
    async with running(a, b):
        await coordinator.wait_ready()
        await broker.event("order.placed", {"order_id": "o-3"})
        [doc] = await sagas.wait_terminal(1, within=25)
    assert doc["status"] == "compensated", history_events(doc)
    compensations = [step for _, step, kind, _ in recorder.order if kind == "compensation"]
    assert compensations[0] == "charge" and compensations[-1] == "reserve"
    assert doc["reason"]["code"] == "attempt_timeout"
    assert [s["status"] for s in doc["steps"]] == ["compensated", "compensated"]


DEADLINE = """
name: with-deadline
version: 1
trigger: {event: order.placed, key: "${event.order_id}"}
timeout: 1s
defaults: {timeout: 10s}
steps:
  - name: reserve
    participant: a
    command: reserve
    compensation: {command: release}
  - name: charge
    participant: b
    command: charge
"""


async def test_saga_deadline_aborts_and_compensates(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "with-deadline", DEADLINE)
    coordinator = coordinators().start()
    recorder = Recorder()
    a = participants("a")  # "b" never answers: its command is never answered
    a.action("reserve")(succeeding(recorder))
    a.compensation("release")(succeeding(recorder))
    async with running(a):
        await coordinator.wait_ready()
        await broker.silent_participant("b")  # routed, so not returned as unavailable
        await broker.event("order.placed", {"order_id": "o-4"})
        [doc] = await sagas.wait_terminal(1, within=20)
    events = history_events(doc)
    assert doc["status"] == "compensated", events
    assert "saga.deadline_passed" in events
    assert doc["reason"]["code"] == "saga_timeout"
    assert ("reserve", "compensation") in [(s, k) for _, s, k, _ in recorder.order]


async def test_duplicate_trigger_events_start_one_saga(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "two-steps", TWO_STEPS)
    coordinator = coordinators().start()
    recorder = Recorder()
    a, b = participants("a"), participants("b")
    a.action("reserve")(succeeding(recorder))
    b.action("charge")(succeeding(recorder))
    async with running(a, b):
        await coordinator.wait_ready()
        event = {"order_id": "o-5", "amount": 1}
        await broker.event("order.placed", event, message_id="m-1")
        await broker.event("order.placed", event, message_id="m-1")  # redelivered copy
        await broker.event("order.placed", event, message_id="m-2")  # same key, new event
        await broker.event("order.placed", {"order_id": 55, "amount": 1})  # numeric key
        docs = await sagas.wait(
            lambda d: (
                len(d) == 2
                and all(x["status"] == "completed" for x in d)
                # repeats of one message are counted on one history entry
                and sum(
                    entry["detail"].get("repeats", 1)
                    for x in d
                    for entry in x["history"]
                    if entry["event"] == "trigger.repeated"
                )
                == 2
            ),
            within=20,
            what="two completed sagas, two repeats recorded",
        )
    assert sorted(doc["key"] for doc in docs) == ["55", "o-5"]
    assert set(recorder.executions.values()) == {1}


async def test_register_command_reports_each_file(
    mongodb_url: str,
    database_name: str,
    mongo: object,  # drops the database afterwards
    definitions_dir: Path,
) -> None:
    write(definitions_dir, "two-steps", TWO_STEPS)
    write(definitions_dir, "broken", "name: Broken\nversion: 1\nsteps: []\n")
    good, bad = definitions_dir / "two-steps.yaml", definitions_dir / "broken.yaml"
    env = {
        **os.environ,
        "SAGA_MONGODB_URL": mongodb_url,
        "SAGA_MONGODB_DATABASE": database_name,
    }

    async def register(*files: Path) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "coordinator",
            "register",
            *map(str, files),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    assert await register(good) == (0, f"{good}: registered\n")
    assert await register(good) == (0, f"{good}: identical\n")
    code, out = await register(bad, good)
    assert code == 1
    assert f"{bad}:1: name: invalid name 'Broken'" in out and f"{good}: identical" in out
    write(definitions_dir, "two-steps", TWO_STEPS.replace("5s", "6s"))
    code, out = await register(good)
    assert code == 1 and "already registered with other content" in out
