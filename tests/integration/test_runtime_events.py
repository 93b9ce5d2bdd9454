"""Parallel groups, conditions and awaited events end to end: ``python -m coordinator run``
(two replicas where it matters), real RabbitMQ, a MongoDB-wire server, SDK participants.
Events are published on the events exchange like any service would."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from participants import Delivery, Participant, StepError
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

TRIP = """
name: trip
version: 1
trigger: {event: trip.requested, key: "${event.trip_id}"}
defaults:
  timeout: 10s
  retry: {max_attempts: 2, backoff: 200ms}
steps:
  - name: travel
    parallel:
      flight:
        - name: book-flight
          participant: a
          command: book
          compensation: {command: cancel}
      hotel:
        - name: book-hotel
          participant: b
          command: book
          compensation: {command: cancel}
  - name: payment
    await:
      event: payment.authorized
      match: ${event.trip_id}
      equals: ${input.trip_id}
      buffer: 5m
    timeout: 1m
  - name: confirm
    participant: c
    command: confirm
    input: {payment: "${steps.payment.output.payment_id}"}
"""

GUARDED = """
name: guarded
version: 1
trigger: {event: order.placed, key: "${event.order_id}"}
defaults:
  timeout: 10s
  retry: {max_attempts: 1}
steps:
  - name: reserve
    participant: a
    command: reserve
    compensation: {command: release}
  - name: review
    when: input.total >= 1000
    participant: b
    command: review
  - name: shipping
    parallel:
      parcel:
        - name: pack
          participant: a
          command: pack
          compensation: {command: unpack}
      label:
        - name: print-label
          participant: b
          command: print_label
  - name: captured
    await:
      event: payment.captured
      match: ${event.order_id}
      equals: ${input.order_id}
    timeout: 2s
"""


def serve_guarded_a(a: Participant, recorder: Recorder) -> None:
    """Participant ``a`` of ``GUARDED``: its actions and compensations all succeed."""
    a.action("reserve")(succeeding(recorder))
    a.compensation("release")(succeeding(recorder))
    a.action("pack")(succeeding(recorder))
    a.compensation("unpack")(succeeding(recorder))


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in doc["steps"]}


async def test_groups_and_awaited_events_across_two_replicas(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    """t-1's payment comes after its step waits; t-2's before its saga even starts (kept,
    then consumed); two replicas share the queues, the store and the buffer."""
    write(definitions_dir, "trip", TRIP)
    first, second = coordinators().start(), coordinators().start()
    recorder = Recorder()
    a, b, c = participants("a"), participants("b"), participants("c")
    a.action("book")(succeeding(recorder, {"booking": "f"}))
    b.action("book")(succeeding(recorder, {"booking": "h"}))
    c.action("confirm")(succeeding(recorder))
    async with running(a, b, c):
        await first.wait_ready()
        await second.wait_ready()
        await broker.event(
            "payment.authorized", {"trip_id": "t-2", "payment_id": "p-2"}, message_id="pay-2"
        )
        await broker.event("trip.requested", {"trip_id": "t-1"})
        await broker.event("trip.requested", {"trip_id": "t-2"})
        await sagas.wait(
            lambda docs: (
                (len(docs) == 2 and any(by_name(d)["payment"]["status"] == "waiting" for d in docs))
                or sum(d["status"] == "completed" for d in docs) == 2
            ),
            what="t-1 waiting",
        )
        await broker.event(
            "payment.authorized", {"trip_id": "t-1", "payment_id": "p-1"}, message_id="pay-1"
        )
        docs = await sagas.wait_terminal(2, within=40)
    for doc in docs:
        assert doc["status"] == "completed", history_events(doc)
        steps = by_name(doc)
        assert steps["payment"]["output"]["payment_id"] == f"p-{doc['key'][-1]}"
        assert steps["payment"]["event_id"] == f"pay-{doc['key'][-1]}"
        assert history_events(doc).count("event.received") == 1
    assert set(recorder.executions.values()) == {1}
    async with httpx.AsyncClient(base_url=first.url, timeout=5) as http:
        metrics = (await http.get("/metrics")).text
    assert "saga_events_buffered_total" in metrics and "saga_events_matched_total" in metrics


async def test_a_parallel_failure_compensates_both_branches_then_the_steps_before(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "guarded", GUARDED)
    coordinator = coordinators().start()
    recorder = Recorder()
    a, b = participants("a"), participants("b")
    serve_guarded_a(a, recorder)

    @b.action("print_label")
    async def refuse(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        recorder.note(delivery)
        raise StepError("printer_jammed", "no label")

    async with running(a, b):
        await coordinator.wait_ready()
        await broker.event("order.placed", {"order_id": "o-1", "total": 10})
        [doc] = await sagas.wait_terminal(1, within=40)
    assert doc["status"] == "compensated", history_events(doc)
    steps = by_name(doc)
    assert steps["review"]["status"] == "skipped"  # the `when` was false: never compensated
    assert steps["print-label"]["status"] == "failed"
    assert steps["pack"]["status"] == steps["reserve"]["status"] == "compensated"
    undone = [(step, kind) for _, step, kind, _ in recorder.order if kind == "compensation"]
    assert undone == [("pack", "compensation"), ("reserve", "compensation")]


async def test_an_await_timeout_compensates(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    broker: Broker,
    sagas: Sagas,
) -> None:
    write(definitions_dir, "guarded", GUARDED)
    coordinator = coordinators().start()
    recorder = Recorder()
    a, b = participants("a"), participants("b")
    serve_guarded_a(a, recorder)
    b.action("review")(succeeding(recorder))
    b.action("print_label")(succeeding(recorder))
    async with running(a, b):
        await coordinator.wait_ready()
        await broker.event("order.placed", {"order_id": "o-2", "total": 5000})
        [doc] = await sagas.wait_terminal(1, within=40)
    assert doc["status"] == "compensated", history_events(doc)
    steps = by_name(doc)
    assert steps["review"]["status"] == "succeeded"  # the `when` held
    assert steps["captured"]["status"] == "failed"
    assert steps["captured"]["action"]["error"]["code"] == "await_timeout"
    assert doc["reason"]["code"] == "await_timeout"
    assert steps["pack"]["status"] == steps["reserve"]["status"] == "compensated"
