"""Property-based fuzzing of the coordinator's and the SDK's consumers (hypothesis), against
the real broker: generated bodies and headers of every hostile class (``fuzz_messages``).

The properties, for every batch: each message the shared codec refuses is dead-lettered
once, with the codec's reason; every other one is answered (the SDK replies) or applied
(the coordinator acks it, or dead-letters it with the service's reason); nothing is left
unacknowledged (the queues are empty once the consumer stopped); no handler failed
unexpectedly; and a normal saga still completes afterwards.

Hypothesis drives the examples from a thread of its own (it does not run coroutines);
each example's batch is published and checked on the test's event loop, against one
consumer that runs through all of them. Quick mode (default, CI): 25 examples of up to 4
messages per consumer. Full mode, ``SAGA_TEST_FUZZ=full``: 300 examples of up to 8.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from coordinator.adapters.wire import RawMessage, decode_event, decode_reply
from participants import Delivery, Participant
from participants._delivery import decode_command
from schemas.codec import BadMessage
from schemas.envelope import HEADER_REJECTION
from tests.integration.fuzz_messages import MAX_BYTES, bodies, contract_headers
from tests.integration.helpers import (
    Broker,
    Coordinator,
    Recorder,
    Sagas,
    running,
    succeeding,
    write,
)
from tests.integration.test_runtime_wire import manual_queue, next_command

pytestmark = pytest.mark.integration

FULL = os.environ.get("SAGA_TEST_FUZZ") == "full"
FUZZ = settings(
    max_examples=300 if FULL else 25,
    deadline=None,
    phases=[Phase.generate],  # no shrinking: every example runs against real processes
    database=None,
    suppress_health_check=list(HealthCheck),
)
BATCH = 8 if FULL else 4
T = TypeVar("T")


def fuzz(
    loop: asyncio.AbstractEventLoop,
    strategy: st.SearchStrategy[T],
    check: Callable[[T], Awaitable[None]],
) -> Awaitable[None]:
    """Run ``check`` on the loop for every example hypothesis draws, from a thread."""

    @FUZZ
    @given(strategy)
    def examples(example: T) -> None:
        asyncio.run_coroutine_threadsafe(check(example), loop).result(timeout=120)

    return asyncio.to_thread(examples)


DEFINITIONS = {
    "waiting": """
name: waiting
version: 1
trigger: {event: fuzz.go, key: "${event.id}"}
defaults: {timeout: 10m}
steps:
  - name: only
    participant: manual
    command: do
""",
    "normal": """
name: normal
version: 1
trigger: {event: normal.go, key: "${event.id}"}
defaults: {timeout: 10s}
steps:
  - name: only
    participant: a
    command: do
""",
}


def refusal(decode: Callable[[], object]) -> str | None:
    try:
        decode()
    except BadMessage as bad:
        return bad.reason
    return None


async def settle(queue: Any, count: int, quiet: float = 0.3, within: float = 60.0) -> list[Any]:
    """Read ``queue`` until ``count`` messages came, then until it has been quiet a while."""
    found: list[AbstractIncomingMessage] = []
    deadline = time.monotonic() + within
    last = time.monotonic()
    while time.monotonic() < deadline:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            found.append(message)
            last = time.monotonic()
        elif len(found) >= count and time.monotonic() - last > quiet:
            break
        else:
            await asyncio.sleep(0.05)
    return found


async def pending(broker: Broker, name: str) -> int:
    queue = await broker.channel.declare_queue(name, passive=True)
    return int(queue.declaration_result.message_count or 0)


async def test_the_coordinator_settles_any_message(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    for name, text in DEFINITIONS.items():
        write(definitions_dir, name, text)
    coordinator = coordinators(
        SAGA_MAX_MESSAGE_BYTES=str(MAX_BYTES), SAGA_RETRY_DELAY="0.1"
    ).start()
    a = participants("a")
    a.action("do")(succeeding(Recorder()))
    async with running(a):
        await coordinator.wait_ready()
        manual = await manual_queue(broker)
        await broker.event("fuzz.go", {"id": "waiting"})
        waiting = (await next_command(manual)).correlation_id or ""
        dead_queue = await broker.channel.get_queue(f"{broker.prefix}.dead-letter", ensure=True)
        targets = st.sampled_from(["reply", "reply", "event:fuzz.go", "event:normal.go"])
        message = st.tuples(targets, bodies, contract_headers([waiting, "no-such-saga"], "only"))
        sent = 0
        reasons: dict[str, str] = {}

        async def check(batch: list[tuple[str, bytes, dict[str, Any]]]) -> None:
            nonlocal sent
            refused: dict[str, str] = {}
            for target, body, headers in batch:
                sent += 1
                message_id = f"m-{sent}"
                if target == "reply":
                    exchange, key = broker.exchanges.replies, "coordinator"
                    raw = RawMessage(body, key, headers, message_id)
                    why = refusal(lambda raw=raw: decode_reply(raw, max_bytes=MAX_BYTES))
                else:
                    exchange, key = broker.exchanges.events, target.split(":", 1)[1]
                    raw = RawMessage(body, key, headers, message_id)
                    why = refusal(lambda raw=raw: decode_event(raw, max_bytes=MAX_BYTES))
                await broker.publish(exchange, key, body, headers=headers, message_id=message_id)
                if why is not None:
                    refused[message_id] = why
            # The service may dead-letter other messages too (a trigger key it cannot
            # resolve), maybe after this batch was checked: collect across batches.
            deadline = time.monotonic() + 60
            while not refused.keys() <= reasons.keys() and time.monotonic() < deadline:
                for m in await settle(dead_queue, 0, quiet=0.2):
                    assert m.message_id not in reasons, f"{m.message_id} dead-lettered twice"
                    reasons[m.message_id or ""] = str((m.headers or {}).get(HEADER_REJECTION))
            for message_id, why in refused.items():
                assert reasons.get(message_id, "")[:200] == why[:200], (message_id, why)

        await fuzz(asyncio.get_running_loop(), st.lists(message, min_size=1, max_size=BATCH), check)
        async with httpx.AsyncClient(base_url=coordinator.url) as http:
            text = (await http.get("/metrics")).text
        failures = [
            line for line in text.splitlines() if line.startswith("saga_message_failures_total{")
        ]
        assert all(line.endswith(" 0.0") for line in failures), failures  # no bug found
        await broker.event("normal.go", {"id": "after-the-fuzzing"})
        await sagas.wait(
            lambda docs: any(
                d.get("key") == "after-the-fuzzing" and d["status"] == "completed" for d in docs
            ),
            within=30,
            what="a normal saga completed after the fuzzing",
        )
    assert (await coordinator.terminate()) == 0
    for queue in ("coordinator.events", "coordinator.replies"):  # nothing left unacknowledged
        assert await pending(broker, f"{broker.prefix}.{queue}") == 0, queue


async def test_the_sdk_settles_any_command(
    participants: Callable[[str], Participant],
    broker: Broker,
) -> None:
    channel = broker.channel
    replies = await channel.declare_queue(f"{broker.prefix}.fuzz-replies", exclusive=True)
    dead_queue = await channel.declare_queue(f"{broker.prefix}.fuzz-dead", exclusive=True)
    inventory = participants("inventory")
    inventory.max_body_bytes = MAX_BYTES

    @inventory.action("reserve")
    async def reserve(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        return {"seen": delivery.attempt}

    message = st.tuples(bodies, contract_headers(["s1", "s2"], "reserve"))
    sent = 0
    async with running(inventory):
        assert inventory._declared is not None
        await replies.bind(inventory._declared.replies, routing_key="fuzz")
        await dead_queue.bind(inventory._declared.dead_letter)
        commands = inventory._declared.commands

        async def check(batch: list[tuple[bytes, dict[str, Any]]]) -> None:
            nonlocal sent
            refused: dict[str, str] = {}
            for body, headers in batch:
                sent += 1
                message_id = f"c-{sent}"
                why = refusal(
                    lambda body=body, headers=headers: decode_command(
                        body=body,
                        headers=headers,
                        message_type="reserve",
                        routing_key="inventory.reserve",
                        reply_to="fuzz",
                        max_body_bytes=MAX_BYTES,
                    )
                )
                if why is not None:
                    refused[message_id] = why
                await commands.publish(
                    aio_pika.Message(
                        body,
                        headers=headers,
                        message_id=message_id,
                        type="reserve",
                        reply_to="fuzz",
                    ),
                    routing_key="inventory.reserve",
                )
            dead = await settle(dead_queue, len(refused))
            got = await settle(replies, len(batch) - len(refused))
            assert sorted(m.message_id or "" for m in dead) == sorted(refused)
            for m in dead:
                assert (
                    str((m.headers or {})[HEADER_REJECTION])[:200]
                    == refused[m.message_id or ""][:200]
                )
            assert len(got) == len(batch) - len(refused)  # one reply per command the codec takes
            for m in got:
                assert json.loads(m.body)["status"] in ("succeeded", "failed")

        await fuzz(asyncio.get_running_loop(), st.lists(message, min_size=1, max_size=BATCH), check)
        # A normal command is still answered afterwards.
        await commands.publish(
            aio_pika.Message(
                b'{"order_id": "o-1"}',
                headers={
                    "x-saga-id": "normal",
                    "x-saga-step": "reserve",
                    "x-saga-kind": "action",
                    "x-saga-attempt": 1,
                    "x-idempotency-key": "normal:reserve:action",
                },
                type="reserve",
                reply_to="fuzz",
            ),
            routing_key="inventory.reserve",
        )
        [normal] = await settle(replies, 1)
        assert json.loads(normal.body) == {"status": "succeeded", "output": {"seen": 1}}
    assert await pending(broker, inventory.queue_name) == 0  # nothing left unacknowledged
