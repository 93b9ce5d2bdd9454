"""The coordinator's side of the wire contract (SPEC §3), with messages published by hand:
duplicate and late replies, and every kind of malformed message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from participants import Participant
from schemas.envelope import HEADER_REJECTION, REPLY_COPIED_HEADERS
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

MANUAL = """
name: manual
version: 1
trigger: {event: manual.go, key: "${event.id}"}
defaults: {timeout: 10s}
steps:
  - name: only
    participant: manual
    command: do
"""


async def manual_queue(broker: Broker) -> AbstractQueue:
    """The command queue of a participant the test plays by hand."""
    return await broker.silent_participant("manual")


async def next_command(queue: AbstractQueue, within: float = 10.0) -> AbstractIncomingMessage:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError("no command arrived")


def reply_headers(command: AbstractIncomingMessage, **changes: Any) -> dict[str, Any]:
    raw = command.headers or {}
    headers = {
        name: value.decode() if isinstance(value, bytes) else value
        for name, value in raw.items()
        if name in REPLY_COPIED_HEADERS
    }
    headers.update(changes)
    return headers


async def test_duplicate_and_late_replies_change_nothing_but_history(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "manual", MANUAL)
    coordinator = coordinators().start()
    await coordinator.wait_ready()
    queue = await manual_queue(broker)
    await broker.event("manual.go", {"id": "m-1"})
    command = await next_command(queue)
    saga_id = command.correlation_id
    assert saga_id and command.type == "do" and command.reply_to == "coordinator"
    headers = reply_headers(command)
    assert headers["x-saga-attempt"] == 1 and headers["x-saga-kind"] == "action"
    assert headers["x-idempotency-key"] == f"{saga_id}:only:action"

    ok = {"status": "succeeded", "output": {"v": 1}}
    await broker.reply(ok, headers, correlation_id=saga_id)
    await sagas.wait(lambda d: d[0]["status"] == "completed", within=10, what="completion")

    await broker.reply({"status": "succeeded", "output": {"v": 2}}, headers)  # duplicate
    failed = {"status": "failed", "error": {"code": "late", "retryable": False}}
    await broker.reply(failed, reply_headers(command, **{"x-saga-attempt": 7}))  # late
    unknown = {"x-saga-id": "no-such-saga", "x-idempotency-key": "no-such-saga:only:action"}
    await broker.reply(ok, reply_headers(command, **unknown))  # unknown saga
    [doc] = await sagas.wait(
        lambda d: history_events(d[0]).count("reply.ignored") == 2,
        within=10,
        what="two ignored replies in the history",
    )
    assert doc["status"] == "completed"
    assert doc["steps"][0]["output"] == {"v": 1}
    assert history_events(doc).count("saga.completed") == 1
    await asyncio.sleep(0.5)
    assert await broker.dead_letters(1, within=0.5) == []  # acknowledged, not rejected


TWO_STEPS = """
name: two-steps
version: 1
trigger: {event: order.placed, key: "${event.order_id}"}
defaults: {timeout: 5s}
steps:
  - name: reserve
    participant: a
    command: reserve
  - name: charge
    participant: b
    command: charge
"""


async def test_malformed_messages_are_dead_lettered_with_a_reason(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "two-steps", TWO_STEPS)
    coordinator = coordinators(SAGA_MAX_MESSAGE_BYTES="2048").start()
    recorder = Recorder()
    a, b = participants("a"), participants("b")
    a.action("reserve")(succeeding(recorder))
    b.action("charge")(succeeding(recorder))
    good = {
        "x-saga-id": "s-1",
        "x-saga-step": "reserve",
        "x-saga-kind": "action",
        "x-saga-attempt": 1,
    }
    replies: dict[str, tuple[Any, dict[str, Any], str]] = {
        "not-json": (b"{oops", good, "not JSON"),
        "array": ([1, 2], good, "not a JSON object"),
        "no-headers": ({"status": "succeeded"}, {}, "without the x-saga-id header"),
        "no-step": (
            {"status": "succeeded"},
            {k: v for k, v in good.items() if k != "x-saga-step"},
            "without the x-saga-step header",
        ),
        "bad-kind": ({"status": "succeeded"}, {**good, "x-saga-kind": "undo"}, "x-saga-kind"),
        "bad-attempt": (
            {"status": "succeeded"},
            {**good, "x-saga-attempt": "zero"},
            "x-saga-attempt",
        ),
        "status": ({"status": "maybe"}, good, "unknown reply status"),
        "body": ({"status": "failed"}, good, "invalid reply body"),
        "big": ({"status": "succeeded", "output": {"x": "y" * 4000}}, good, "over the limit"),
    }
    events: dict[str, tuple[Any, str]] = {
        "event-array": ([], "not a JSON object"),
        "event-no-key": ({"amount": 1}, "has no field 'order_id'"),
        "event-bad-key": ({"order_id": {"nested": 1}}, "business key"),
        "event-big": ({"order_id": "o", "pad": "z" * 4000}, "over the limit"),
    }
    async with running(a, b):
        await coordinator.wait_ready()
        for message_id, (body, headers, _) in replies.items():
            await broker.reply(body, headers, message_id=message_id)
        for message_id, (body, _) in events.items():
            await broker.event("order.placed", body, message_id=message_id)
        await broker.event("order.placed", {"order_id": "fine"})
        dead = await broker.dead_letters(len(replies) + len(events), within=20)
        [doc] = await sagas.wait_terminal(1, within=20)
    assert doc["status"] == "completed"
    reasons = {m.message_id: str((m.headers or {}).get(HEADER_REJECTION)) for m in dead}
    expected = {mid: why for mid, (_, _, why) in replies.items()}
    expected.update({mid: why for mid, (_, why) in events.items()})
    assert set(reasons) == set(expected)
    for message_id, why in expected.items():
        assert why in reasons[message_id], (message_id, reasons[message_id])
    kept = next(m for m in dead if m.message_id == "not-json")
    assert kept.body == b"{oops"  # the original body, unchanged
    assert (await coordinator.terminate()) == 0


async def test_a_message_that_keeps_failing_is_dead_lettered_after_max_deliveries(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    broker: Broker,
    sagas: Sagas,
) -> None:
    """The bound is the coordinator's own count, not the broker's delivery count.

    Since RabbitMQ 4.3 a requeue by ``basic.nack`` no longer raises a quorum queue's
    delivery count, so a guard on ``x-delivery-count`` never fires there. Each try here is a
    fresh copy, delivered once: the broker never counts a redelivery (no ``x-delivery-count``
    on the dead-lettered copy), and the bound still holds.
    """
    write(definitions_dir, "manual", MANUAL)
    coordinator = coordinators(SAGA_MAX_DELIVERIES="3", SAGA_RETRY_DELAY="0.1").start()
    await coordinator.wait_ready()
    queue = await manual_queue(broker)
    await broker.event("manual.go", {"id": "m-1"})
    command = await next_command(queue)
    # Break the instance: its definition version no longer exists, so every delivery of
    # the reply fails with an error that is nobody's fault but the data's. Raise the
    # revision, as every writer must: the coordinator caches the states it saved and
    # notices another writer only by the revision.
    await sagas.collection.update_one(
        {"_id": command.correlation_id},
        {"$set": {"definition_version": 99}, "$inc": {"revision": 1}},
    )
    ok = {"status": "succeeded", "output": {}}
    await broker.reply(ok, reply_headers(command), message_id="doomed")
    [dead] = await broker.dead_letters(1, within=20)
    assert dead.message_id == "doomed"
    headers = dead.headers or {}
    reason = str(headers.get(HEADER_REJECTION))
    assert reason.startswith("failed 3 tries; last error: UnknownDefinition"), reason
    assert headers.get("x-saga-tries") == 2  # the copy of the second failure failed a third time
    assert headers.get("x-delivery-count", 0) == 0  # never redelivered by the broker
    assert dead.routing_key == "coordinator"  # the original routing key, not the queue's
    assert await broker.dead_letters(1, within=2) == []  # once, not in a loop
    async with httpx.AsyncClient(base_url=coordinator.url) as http:
        text = (await http.get("/metrics")).text
    assert 'saga_message_failures_total{queue="replies"} 3.0' in text
    assert 'saga_dead_letters_total{category="delivery_limit",queue="replies"} 1.0' in text
    assert (await coordinator.terminate()) == 0
    assert coordinator.log().count("Traceback") >= 3  # each failure logged with its traceback
