"""Routing faults, seen from the coordinator: commands nobody can receive, events nobody
listens to, triggers that go away (or are retired), an exchange from an older deployment,
several brokers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage

from participants import Participant
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

GHOST = """
name: ghost
version: 1
trigger: {event: ghost.go, key: "${event.id}"}
defaults:
  timeout: 60s
  retry: {max_attempts: 2, backoff: 1s}
steps:
  - name: haunt
    participant: ghost
    command: haunt
"""

TRIGGERED = """
name: triggered
version: {version}
{trigger}
defaults: {{timeout: 10s}}
steps:
  - name: only
    participant: a
    command: do
"""


async def unrouted(broker: Broker, within: float = 10.0) -> list[AbstractIncomingMessage]:
    """Everything in ``{prefix}.unrouted`` after ``within`` seconds or once non-empty."""
    queue = await broker.channel.get_queue(f"{broker.prefix}.unrouted", ensure=True)
    found: list[AbstractIncomingMessage] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            found.append(message)
            continue
        if found:
            return found
        await asyncio.sleep(0.1)
    return found


async def test_a_command_nobody_can_receive_fails_its_attempts_as_participant_unavailable(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "ghost", GHOST)
    coordinator = coordinators().start()
    await coordinator.wait_ready()
    await broker.event("ghost.go", {"id": "g-1"})
    # Both attempts fail at once, not after the step's 60 s timeout.
    [doc] = await sagas.wait_terminal(1, within=30)
    [step] = doc["steps"]
    action = step["action"]
    assert action["error"]["code"] == "participant_unavailable", step
    assert action["error"]["retryable"] is True
    assert action["attempt"] == 2 and step["status"] == "failed"
    failures = [h for h in doc["history"] if h["event"] == "action.failed"]
    assert [h["attempt"] for h in failures] == [1, 2]
    async with httpx.AsyncClient(base_url=coordinator.url) as http:
        text = (await http.get("/metrics")).text
    assert "saga_commands_returned_total 2.0" in text
    assert (await coordinator.terminate()) == 0


async def test_an_event_nobody_listens_to_is_kept_in_unrouted(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    broker: Broker,
) -> None:
    coordinator = coordinators().start()
    await coordinator.wait_ready()
    await broker.event("order.plaecd", {"id": "typo"}, message_id="typo-1")
    [kept] = await unrouted(broker)
    assert kept.message_id == "typo-1" and kept.routing_key == "order.plaecd"
    assert (await coordinator.terminate()) == 0


async def test_a_trigger_that_goes_away_is_unbound(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    trigger = 'trigger: {event: t.go, key: "${event.id}"}'
    write(definitions_dir, "v1", TRIGGERED.format(version=1, trigger=trigger))
    coordinator = coordinators().start()
    a = participants("a")
    a.action("do")(succeeding(Recorder()))
    async with running(a):
        await coordinator.wait_ready()
        await broker.event("t.go", {"id": "1"})
        await sagas.wait_terminal(1, within=20)
        v2 = TRIGGERED.format(version=2, trigger="")
        async with httpx.AsyncClient(base_url=coordinator.url) as http:
            answer = await http.post(
                "/v1/definitions", content=v2, headers={"content-type": "application/yaml"}
            )
            assert answer.status_code == 201, answer.text
        # The binding goes within a definitions refresh; until then events still start sagas.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            marker = uuid.uuid4().hex
            await broker.event("t.go", {"id": marker}, message_id=marker)
            kept = await unrouted(broker, within=1.0)
            if any(m.message_id == marker for m in kept):
                break
        else:
            raise AssertionError("t.go is still bound after its trigger went away")
        started = len(await sagas.all())
        await broker.event("t.go", {"id": "after"})
        await unrouted(broker, within=2.0)
        assert len(await sagas.all()) == started
    assert (await coordinator.terminate()) == 0


async def test_a_retired_definition_starts_nothing_until_a_new_version_is_registered(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    """``POST /v1/definitions/{name}/retire`` removes the trigger's binding: its event is
    routed nowhere (kept in ``{prefix}.unrouted``) until a new version binds it again."""
    trigger = 'trigger: {event: t.go, key: "${event.id}"}'
    write(definitions_dir, "v1", TRIGGERED.format(version=1, trigger=trigger))
    coordinator = coordinators().start()
    a = participants("a")
    a.action("do")(succeeding(Recorder()))
    async with running(a), httpx.AsyncClient(base_url=coordinator.url) as http:
        await coordinator.wait_ready()
        await broker.event("t.go", {"id": "before"})
        await sagas.wait_terminal(1, within=20)

        retired = await http.post("/v1/definitions/triggered/retire")
        assert retired.status_code == 200, retired.text
        assert retired.json()["retired"] is True
        await broker.event("t.go", {"id": "retired"}, message_id="retired-1")
        kept = await unrouted(broker)
        assert [(m.message_id, m.routing_key) for m in kept] == [("retired-1", "t.go")]
        assert [doc["key"] for doc in await sagas.all()] == ["before"]

        v2 = TRIGGERED.format(version=2, trigger=trigger)
        answer = await http.post(
            "/v1/definitions", content=v2, headers={"content-type": "application/yaml"}
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["retired"] is False
        await broker.event("t.go", {"id": "again"}, message_id="again-1")
        docs = await sagas.wait_terminal(2, within=20)
        again = next(doc for doc in docs if doc["key"] == "again")
        assert again["definition_version"] == 2 and again["status"] == "completed"
        assert await unrouted(broker, within=1.0) == []
    assert (await coordinator.terminate()) == 0


async def test_an_events_exchange_from_before_the_alternate_exchange_is_kept(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    broker: Broker,
) -> None:
    await broker.channel.declare_exchange(
        broker.exchanges.events, aio_pika.ExchangeType.TOPIC, durable=True
    )
    coordinator = coordinators().start()
    await coordinator.wait_ready()
    assert f"exchange {broker.exchanges.events} exists without an alternate" in coordinator.log()
    assert (await coordinator.terminate()) == 0


async def test_several_broker_urls_the_first_unreachable(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    amqp_url: str,
    mongodb_url: str,
    database_name: str,
    prefix: str,
    broker: Broker,
    sagas: Sagas,
) -> None:
    urls = f"amqp://guest:guest@127.0.0.1:1/, {amqp_url}"
    write(
        definitions_dir,
        "v1",
        TRIGGERED.format(version=1, trigger='trigger: {event: t.go, key: "${event.id}"}'),
    )
    coordinator = coordinators(SAGA_AMQP_URL=urls).start()
    a = Participant(
        "a",
        amqp_url=urls,
        mongodb_url=mongodb_url,
        database=database_name,
        prefix=prefix,
        queue=f"{prefix}.a.commands",
        stop_timeout=2.0,
    )
    a.action("do")(succeeding(Recorder()))
    async with running(a):
        await coordinator.wait_ready()
        await broker.event("t.go", {"id": "1"})
        [doc] = await sagas.wait_terminal(1, within=20)
    assert doc["status"] == "completed"
    assert (await coordinator.terminate()) == 0
