"""Observability end to end: ``/metrics``, trace context on the wire, JSON logs.

One coordinator process (``SAGA_LOG_FORMAT=json``), SDK participants in the test process, and
two spy queues of the test's own: one bound to every command, one to the coordinator's reply
routing key (a direct exchange delivers a copy to every queue bound with the key), so the
test reads the real messages.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from participants import Delivery, Participant, RetryableError, StepError
from tests.integration.helpers import (
    Broker,
    Coordinator,
    Sagas,
    history_events,
    running,
    write,
)

pytestmark = pytest.mark.integration

TRACED = """
name: traced
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
    compensation: {command: release, input: {order_id: "${input.order_id}"}}
  - name: charge
    participant: b
    command: charge
    input: {order_id: "${input.order_id}"}
"""

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACEPARENT_FORMAT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition: (name, labels) → value."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match is not None, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        samples[(name, frozenset(LABEL.findall(labels or "")))] = float(value)
    return samples


class Scrape:
    def __init__(self, text: str) -> None:
        self.samples = parse_metrics(text)

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)


async def spy(broker: Broker, exchange: str, routing_key: str) -> AbstractQueue:
    queue = await broker.channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key=routing_key)
    return queue


async def drain(queue: AbstractQueue) -> list[AbstractIncomingMessage]:
    found: list[AbstractIncomingMessage] = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        found.append(message)
    return found


async def scrape_until(
    http: httpx.AsyncClient, ready: Callable[[Scrape], bool], within: float = 10.0
) -> Scrape:
    deadline = time.monotonic() + within
    while True:
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        scrape = Scrape(response.text)
        if ready(scrape) or time.monotonic() > deadline:
            return scrape
        await asyncio.sleep(0.2)


async def test_metrics_traces_and_json_logs(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "traced", TRACED)
    coordinator = coordinators(SAGA_LOG_FORMAT="json").start()
    a, b = participants("a"), participants("b")
    failed_once: set[str] = set()

    @a.action("reserve")
    async def reserve(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        return {"id": input["order_id"]}

    @a.compensation("release")
    async def release(input: dict[str, Any], delivery: Delivery) -> None:
        return None

    @b.action("charge")
    async def charge(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        order = input["order_id"]
        if order == "declined":
            raise StepError("card_declined", "no")
        if order == "flaky" and order not in failed_once:
            failed_once.add(order)
            raise RetryableError("gateway_busy", "try again")
        return {"charge_id": f"c-{order}"}

    async with running(a, b):
        await coordinator.wait_ready()
        commands = await spy(broker, broker.exchanges.commands, "#")
        replies = await spy(broker, broker.exchanges.replies, "coordinator")
        async with httpx.AsyncClient(base_url=coordinator.url, timeout=5) as http:
            before = Scrape((await http.get("/metrics")).text)
            assert before.value("saga_transitions_total") == 0
            await broker.publish(
                broker.exchanges.events,
                "order.placed",
                {"order_id": "ok"},
                headers={"traceparent": TRACEPARENT},
            )
            await broker.event("order.placed", {"order_id": "declined"})
            await broker.event("order.placed", {"order_id": "flaky"})
            started = await http.post(
                "/v1/sagas", json={"definition": "traced", "input": {"order_id": "rest"}}
            )
            assert started.status_code == 201
            rest_traced = await http.post(
                "/v1/sagas",
                json={"definition": "traced", "input": {"order_id": "rest-traced"}},
                headers={"traceparent": TRACEPARENT.replace("4bf9", "5bf9")},
            )
            assert rest_traced.status_code == 201
            await broker.reply(b"not json", {"x-saga-id": "s"})
            docs = await sagas.wait_terminal(5, within=30)
            scrape = await scrape_until(
                http,
                lambda s: (
                    s.value("saga_sagas_completed_total", definition="traced") >= 4
                    and s.value("saga_dead_letters_total", queue="replies", category="not_json")
                    >= 1
                ),
            )
        await asyncio.sleep(0.5)  # the last replies reach the spy queue too
        sent, replied = await drain(commands), await drain(replies)
    assert await coordinator.terminate() == 0
    by_key = {doc["input"]["order_id"]: doc for doc in docs}
    assert by_key["declined"]["status"] == "compensated", history_events(by_key["declined"])
    assert {by_key[k]["status"] for k in ("ok", "flaky", "rest", "rest-traced")} == {"completed"}

    # -- metrics --
    name = {"definition": "traced"}
    assert scrape.value("saga_sagas_started_total", **name) == 5
    assert scrape.value("saga_sagas_completed_total", **name) == 4
    assert scrape.value("saga_sagas_compensated_total", **name) == 1
    assert scrape.value("saga_sagas_failed_total", **name) == 0
    assert scrape.value("saga_step_retries_total", step="charge", kind="action", **name) == 1
    assert scrape.value("saga_dead_letters_total", queue="replies", category="not_json") == 1
    assert scrape.value("saga_dead_letters_total", queue="events", category="not_json") == 0
    assert scrape.value("saga_duration_seconds_count", status="completed", **name) == 4
    assert scrape.value("saga_duration_seconds_count", status="compensated", **name) == 1
    assert scrape.value("saga_step_duration_seconds_count", step="reserve", kind="action", **name)
    assert scrape.value(
        "saga_step_duration_seconds_count", step="reserve", kind="compensation", **name
    )
    transitions = scrape.value("saga_transitions_total")
    round_trips = scrape.total("saga_db_round_trips_total")
    assert transitions >= 5 * 3 and round_trips > transitions  # read + replace per transition
    # A start saves revision 1 and every later transition adds one: one coordinator made them.
    assert transitions == sum(doc["revision"] for doc in docs)
    assert scrape.value("saga_timers_fired_total") >= 1  # the flaky charge's backoff
    assert scrape.value("saga_commands_relayed_total") == 0  # every publish was confirmed
    assert scrape.value("saga_db_round_trips_total", command="insert") >= 5
    assert scrape.value("saga_publish_confirm_seconds_count") >= 5 * 2 + 2
    assert scrape.value("saga_publish_confirm_seconds_sum") > 0
    assert scrape.total("saga_sagas_in_flight") == 0  # every saga has finished

    # -- trace context: every command and every reply carries its saga's traceparent --
    traces = {doc["_id"]: doc["traceparent"] for doc in docs}
    assert traces[by_key["ok"]["_id"]] == TRACEPARENT
    assert traces[by_key["rest-traced"]["_id"]] == TRACEPARENT.replace("4bf9", "5bf9")
    generated = [traces[by_key[k]["_id"]] for k in ("declined", "flaky", "rest")]
    assert all(TRACEPARENT_FORMAT.match(t) for t in generated)
    assert len({*generated, TRACEPARENT}) == 4
    assert len(sent) >= 5 * 2 + 2  # two steps each, a retry and a compensation
    assert scrape.value("saga_commands_published_total") == len(sent)
    for message in sent:
        assert message.headers["traceparent"] == traces[message.correlation_id]
    real_replies = [m for m in replied if m.correlation_id in traces]
    assert len(real_replies) == len(sent)
    for message in real_replies:
        assert message.headers["traceparent"] == traces[message.correlation_id]

    # -- JSON logs: one object per line, saga lines carry their saga id and step --
    lines = [json.loads(line) for line in coordinator.log().splitlines() if line.strip()]
    assert all(isinstance(line, dict) and "message" in line for line in lines)
    saga_lines = [line for line in lines if line.get("saga_id") in traces]
    assert any(line["message"].startswith("saga started") for line in saga_lines)
    assert any(line.get("step") == "reserve" for line in saga_lines)  # the compensation
    assert any("dead-lettering" in line["message"] for line in lines)
