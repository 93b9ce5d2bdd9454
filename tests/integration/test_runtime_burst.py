"""A burst of copies of one reply to one saga costs about what one reply costs.

The coordinator runs as a subprocess against the real broker and store. Participant ``a``
answers its command once; the test then sends 1,500 more copies of that same reply. The
coordinator applies one transition per saga at a time, so the copies neither conflict with
each other nor get requeued to conflict again: the replies queue drains, the saga moves on
exactly once, and another saga started after the burst completes too.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from participants import Delivery, Participant
from tests.integration.helpers import (
    Broker,
    Coordinator,
    Recorder,
    Sagas,
    running,
    succeeding,
    write,
)

pytestmark = pytest.mark.integration

COPIES = 1500 if os.environ.get("SAGA_TEST_FULL") == "1" else 300
"""The full burst with ``SAGA_TEST_FULL=1``; a smaller one by default, to keep CI quick."""

TWO_STEPS = """
name: burst
version: 1
trigger: {event: order.placed, key: "${event.order_id}"}
defaults:
  timeout: 2m
  retry: {max_attempts: 1}
steps:
  - name: reserve
    participant: a
    command: reserve
  - name: charge
    participant: b
    command: charge
"""


async def replies_waiting(broker: Broker) -> int:
    queue = await broker.channel.declare_queue(f"{broker.prefix}.coordinator.replies", passive=True)
    return int(queue.declaration_result.message_count or 0)


async def test_a_burst_of_one_reply_drains_and_applies_once(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "burst", TWO_STEPS)
    coordinator = coordinators().start()
    answered: asyncio.Queue[Delivery] = asyncio.Queue()
    recorder = Recorder()
    a, b = participants("a"), participants("b")

    @a.action("reserve")
    async def reserve(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        recorder.note(delivery)
        await answered.put(delivery)
        return {"reserved": True}

    b.action("charge")(succeeding(recorder))
    async with running(a, b):
        await coordinator.wait_ready()
        await broker.event("order.placed", {"order_id": "hot"})
        first = await asyncio.wait_for(answered.get(), 30)
        headers = {
            "x-saga-id": first.saga_id,
            "x-saga-step": first.step,
            "x-saga-kind": first.kind,
            "x-saga-attempt": first.attempt,
            "x-idempotency-key": first.idempotency_key,
        }
        body = {"status": "succeeded", "output": {"reserved": True}}
        for _ in range(COPIES):
            await broker.reply(body, headers, correlation_id=first.saga_id)
        await broker.event("order.placed", {"order_id": "cold"})
        docs = await sagas.wait(
            lambda d: len(d) == 2 and all(x["status"] == "completed" for x in d),
            within=120,
            what="both sagas completed",
        )
        deadline = time.monotonic() + 120
        while True:
            waiting = await replies_waiting(broker)
            if waiting == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert waiting == 0, f"{waiting} replies still queued"
        async with httpx.AsyncClient(base_url=coordinator.url, timeout=5) as http:
            metrics = (await http.get("/metrics")).text
    conflicts = re.search(r"^saga_save_conflicts_total (\S+)$", metrics, re.MULTILINE)
    assert conflicts is not None, metrics[:2000]
    assert float(conflicts.group(1)) == 0  # the copies never raced each other
    hot = next(doc for doc in docs if doc["key"] == "hot")
    assert [step["status"] for step in hot["steps"]] == ["succeeded", "succeeded"]
    assert set(recorder.executions.values()) == {1}  # every command ran once per key
    assert await coordinator.terminate() == 0
