"""What the fault tests share: the mode (quick or full), the workload, waiting for the sagas,
and the figures each test reports.

``SAGA_FAULTS=full`` runs the sizes of the operations guide (500 sagas through a broker
restart and a cluster failover, 1,000 sagas through repeated ``kill -9`` of replicas); the
default, ``quick``, runs the same scenarios smaller, so the suite stays fast on two cores.
Each test records its figures; they are printed at the end of the run and, when
``SAGA_FAULTS_FIGURES`` names a file, appended to it as JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

from participants import Participant
from tests.integration.helpers import (
    TERMINAL,
    Broker,
    Coordinator,
    Recorder,
    history_events,
    participant,
    succeeding,
    write,
)

MODE = os.environ.get("SAGA_FAULTS", "quick")
if MODE not in ("quick", "full"):
    raise pytest.UsageError(f"SAGA_FAULTS must be quick or full, not {MODE!r}")
FULL = MODE == "full"

#: The figures of every fault test of this run (printed by the terminal summary hook).
RECORDED: list[Figures] = []

#: Two steps, one compensation; timeouts long enough that an outage of the broker or of a
#: replica delays the sagas without failing them.
FAULT_DEFINITION = """
name: fault
version: 1
trigger: {event: order.placed, key: "${event.order_id}"}
defaults:
  timeout: 90s
  retry: {max_attempts: 5, backoff: 500ms, multiplier: 1.0}
steps:
  - name: reserve
    participant: a
    command: reserve
    compensation: {command: release}
  - name: charge
    participant: b
    command: charge
"""


#: MongoDB connections per process. The test database (SecantusDB) serves each connection on
#: a thread of its own and slows to seconds per operation with hundreds of them, which three
#: busy replicas (about 70 each by default) and the participants reach.
POOL = 10


def pooled(mongodb_url: str) -> str:
    """``mongodb_url`` with ``maxPoolSize=POOL``."""
    if "?" in mongodb_url:
        return f"{mongodb_url}&maxPoolSize={POOL}"
    return f"{mongodb_url.rstrip('/')}/?maxPoolSize={POOL}"


@dataclass
class Figures:
    """What one fault run measured."""

    test: str
    mode: str = MODE
    sagas: int = 0
    faults: int = 0
    lost: int = 0
    actions_run_twice: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    seconds_to_all_terminal: float = 0.0
    """From the first event published to the last saga terminal."""
    seconds_after_last_fault: float = 0.0
    """From the end of the last fault (node back, replica restarted) to the last terminal."""
    notes: dict[str, Any] = field(default_factory=dict)

    def report(self) -> None:
        RECORDED.append(self)
        target = os.environ.get("SAGA_FAULTS_FIGURES")
        if target:
            with open(target, "a", encoding="utf-8") as out:
                out.write(json.dumps(asdict(self)) + "\n")

    def line(self) -> str:
        return (
            f"{self.test} [{self.mode}]: {self.sagas} sagas, {self.faults} faults, "
            f"{self.lost} lost, {self.actions_run_twice} actions run twice, "
            f"all terminal after {self.seconds_to_all_terminal:.1f} s "
            f"({self.seconds_after_last_fault:.1f} s after the last fault), "
            f"statuses {self.statuses} {self.notes or ''}"
        )


async def publish_orders(broker: Broker, keys: list[str]) -> None:
    """One ``order.placed`` event per key, 100 at a time."""
    for start in range(0, len(keys), 100):
        chunk = keys[start : start + 100]
        await asyncio.gather(*(broker.event("order.placed", {"order_id": k}) for k in chunk))


def order_keys(total: int) -> list[str]:
    return [f"o-{n}" for n in range(total)]


class SagaCounts:
    """Counts over the ``sagas`` collection, without reading every document each poll."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        self.collection = client[database]["sagas"]

    async def count(self, status: str | tuple[str, ...] | None = None) -> int:
        if status is None:
            return await self.collection.count_documents({})
        statuses = [status] if isinstance(status, str) else list(status)
        return await self.collection.count_documents({"status": {"$in": statuses}})

    async def wait_for(
        self, status: str | tuple[str, ...], at_least: int, *, within: float, what: str
    ) -> None:
        deadline = time.monotonic() + within
        while (found := await self.count(status)) < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {found} of {at_least}")
            await asyncio.sleep(0.25)

    async def wait_all_terminal(self, total: int, *, within: float) -> float:
        """Poll until ``total`` sagas exist and all are terminal; the monotonic time then."""
        deadline = time.monotonic() + within
        while True:
            terminal, existing = await self.count(TERMINAL), await self.count()
            if existing >= total and terminal == existing:
                return time.monotonic()
            if time.monotonic() > deadline:
                docs = [d async for d in self.collection.find({}, {"status": 1})]
                raise AssertionError(
                    f"not all terminal after {within:.0f} s: {existing} of {total} sagas exist, "
                    f"statuses {dict(Counter(d['status'] for d in docs))}"
                )
            await asyncio.sleep(0.5)

    async def all(self) -> list[dict[str, Any]]:
        return [doc async for doc in self.collection.find({})]


class TimedRecorder(Recorder):
    """A ``Recorder`` that also keeps when each execution began, to explain a repeat."""

    def __init__(self) -> None:
        super().__init__()
        self.began: dict[str, list[float]] = {}
        self._zero = time.monotonic()

    def note(self, delivery: Any) -> None:
        super().note(delivery)
        at = round(time.monotonic() - self._zero, 2)
        self.began.setdefault(delivery.idempotency_key, []).append(at)


@dataclass
class Workload:
    """A fault run's work: one order key per saga, participants ``a`` (reserve, release) and
    ``b`` (charge) of ``FAULT_DEFINITION``, and counts over the test's sagas."""

    keys: list[str]
    recorder: TimedRecorder
    a: Participant
    b: Participant
    counts: SagaCounts


def workload(
    total: int,
    *,
    delay: float,
    definitions_dir: Path,
    amqp_url: str,
    mongo: AsyncMongoClient[dict[str, Any]],
    mongodb_url: str,
    database: str,
    prefix: str,
) -> Workload:
    """Write ``FAULT_DEFINITION``; ``total`` order keys; participants whose actions take
    ``delay`` seconds and succeed, on ``pooled(mongodb_url)``."""
    write(definitions_dir, "fault", FAULT_DEFINITION)
    recorder = TimedRecorder()
    a, b = (
        participant(
            name,
            amqp_url=amqp_url,
            mongodb_url=pooled(mongodb_url),
            database=database,
            prefix=prefix,
        )
        for name in ("a", "b")
    )
    a.action("reserve")(succeeding(recorder, delay=delay))
    a.compensation("release")(succeeding(recorder))
    b.action("charge")(succeeding(recorder, delay=delay))
    return Workload(order_keys(total), recorder, a, b, SagaCounts(mongo, database))


def judge(
    figures: Figures, keys: list[str], docs: list[dict[str, Any]], recorder: TimedRecorder
) -> None:
    """Fill in the figures, report them, then assert SPEC §4's guarantees on the run."""
    by_key = Counter(doc["key"] for doc in docs)
    figures.sagas = len(keys)
    figures.lost = sum(1 for key in keys if by_key[key] == 0)
    figures.statuses = dict(Counter(doc["status"] for doc in docs))
    twice = {key: n for key, n in recorder.executions.items() if n > 1}
    figures.actions_run_twice = sum(1 for key in twice if key.endswith(":action"))
    figures.report()
    assert figures.lost == 0, f"{figures.lost} sagas lost: {figures.line()}"
    assert not [key for key, n in by_key.items() if n > 1], "a business key started twice"
    assert len(docs) == len(keys), figures.line()
    assert all(doc["status"] in TERMINAL for doc in docs), figures.statuses
    if twice:
        began = {key: recorder.began.get(key) for key in twice}
        raise AssertionError(
            f"handlers ran twice for one idempotency key (seconds into the run each "
            f"execution began): {began}; {figures.line()}"
        )
    for doc in docs:
        events = Counter(history_events(doc))
        assert events["saga.started"] == 1, (doc["_id"], events)
    # Nothing in the run was meant to fail: every saga completes, each action ran once.
    assert figures.statuses == {"completed": len(keys)}, figures.line()
    actions = {key for key in recorder.executions if key.endswith(":action")}
    assert len(actions) == 2 * len(keys), (len(actions), figures.line())


async def transitions_of(coordinator: Coordinator) -> int:
    """The replica's ``saga_transitions_total``: transitions this process persisted."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(f"{coordinator.url}/metrics")
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "saga_transitions_total":
                return int(sample.value)
    raise AssertionError(f"no saga_transitions_total in /metrics of {coordinator.url}")


def persisted_transitions(docs: list[dict[str, Any]]) -> int:
    """Every transition persisted, by any replica: a saga's revision counts its saves."""
    return sum(int(doc["revision"]) for doc in docs)
