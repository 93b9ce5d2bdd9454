"""``saga-coordinator demo``: the whole product on embedded defaults, in one process.

It starts a MongoDB-compatible server (SecantusDB) when ``SAGA_MONGODB_URL`` is unset,
the coordinator (consumers, timers, REST API), the example participants and the
definitions in ``schemas/``; then it publishes trigger events the way any service would,
and the ``payment.authorized`` events of the trips the way a payment provider would (one
before its trip is even requested), and prints each saga's timeline as soon as it ends
(and, while none ends, what it is waiting for). Everything it creates is its own: a fresh
exchange prefix and database, removed at the end. ``--keep`` leaves the service, its console
and the participants running until Ctrl-C. Exit 0 when every sample saga ended as expected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika

import schemas
from coordinator.adapters.mongo import MongoSagaStore
from coordinator.api.sagas import saga_out
from coordinator.app import serve
from coordinator.demo_samples import PAYMENT_AUTHORIZED, Authorize, Sample
from coordinator.demo_samples import samples as demo_samples
from coordinator.engine.state import ENDED_STATUSES, SagaState
from coordinator.errors import AdapterError
from coordinator.local import (
    EXAMPLES,
    amqp_problem,
    base_url,
    embedded_mongodb,
    example_participants,
    free_port,
    service_urls,
    until_ready,
)
from coordinator.settings import CoordinatorSettings
from coordinator.timeline import timeline
from schemas.envelope import Exchanges

__all__ = ["main"]

log = logging.getLogger("coordinator.demo")

#: How long the demo waits for its early ``payment.authorized`` to be kept.
_KEPT_WITHIN = 30.0


class _Events:
    """The demo's own connection to the events exchange: it publishes as any service would."""

    def __init__(self, exchange: aio_pika.abc.AbstractExchange) -> None:
        self._exchange = exchange

    async def publish(self, event_type: str, body: dict[str, Any], message_id: str) -> None:
        await self._exchange.publish(
            aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                message_id=message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=event_type,
        )

    async def authorize(self, sample: Sample) -> None:
        """Publish the trip's ``payment.authorized``, as its payment provider would."""
        await self.publish(PAYMENT_AUTHORIZED, sample.authorization, f"au-{sample.key}")


@contextlib.asynccontextmanager
async def _events(settings: CoordinatorSettings) -> AsyncIterator[_Events]:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        yield _Events(await channel.get_exchange(Exchanges(settings.exchange_prefix).events))


async def _publish_events(
    events: _Events, store: MongoSagaStore, samples: list[Sample]
) -> set[str]:
    """The early authorizations first (and wait until the coordinator keeps them), then
    every trigger, each trip's authorization that goes with it right after; return the
    keys whose early authorization the coordinator did not keep."""
    missed: set[str] = set()
    for sample in [sample for sample in samples if sample.authorize is Authorize.BEFORE]:
        await events.authorize(sample)
        kept = await _until_kept(store, sample.key)
        if not kept:
            missed.add(sample.key)
        print(
            f"published {PAYMENT_AUTHORIZED} for {sample.key} before its trip is requested: "
            + ("kept by the coordinator" if kept else "NOT kept by the coordinator"),
            flush=True,
        )
    for sample in samples:
        await events.publish(sample.event_type, sample.body, uuid.uuid4().hex)
        if sample.authorize is Authorize.WITH:
            await events.authorize(sample)
    return missed


async def _until_kept(store: MongoSagaStore, key: str) -> bool:
    """Whether the coordinator has kept a ``payment.authorized`` for ``key``."""
    deadline = time.monotonic() + _KEPT_WITHIN
    while time.monotonic() < deadline:
        if await store.buffered_events(PAYMENT_AUTHORIZED, key, datetime.now(UTC), 1):
            return True
        await asyncio.sleep(0.1)
    return False


#: Seconds without a saga ending after which the demo says what it is waiting for.
_QUIET = 2.0


async def _stream(
    store: MongoSagaStore, events: _Events, samples: list[Sample], patience: float
) -> dict[str, SagaState | None]:
    """Print each sample's timeline as soon as its saga ends, and, while none ends, what
    the demo is waiting for; publish a trip's authorization once its saga waits for it;
    return every sample's saga (as it stands at the timeout)."""
    found: dict[str, SagaState | None] = {sample.key: None for sample in samples}
    unauthorized = {s.key for s in samples if s.authorize is Authorize.WHEN_WAITING}
    printed: set[str] = set()
    deadline = time.monotonic() + patience
    said = time.monotonic()
    while len(printed) < len(samples) and time.monotonic() < deadline:
        for sample in samples:
            if sample.key in printed:
                continue
            state = found[sample.key] = await store.find_saga(sample.definition, sample.key)
            if state is not None and sample.key in unauthorized and state.awaiting:
                unauthorized.discard(sample.key)
                print(
                    f"{sample.key} waits for {PAYMENT_AUTHORIZED}: publishing it, as the "
                    "payment provider would",
                    flush=True,
                )
                await events.authorize(sample)
            if state is not None and state.status in ENDED_STATUSES:
                print(_timeline(sample, state), flush=True)
                printed.add(sample.key)
                said = time.monotonic()
        if printed != found.keys() and time.monotonic() - said >= _QUIET:
            pending = [s for s in samples if s.key not in printed]
            print(_waiting(pending, found), flush=True)
            said = time.monotonic()
        await asyncio.sleep(0.2)
    for sample in samples:
        if sample.key not in printed:
            print(_timeline(sample, found[sample.key]), flush=True)
    return found


def _waiting(pending: list[Sample], found: dict[str, SagaState | None]) -> str:
    """``… waiting for N sagas: key: step kind #attempt what; …``."""
    parts = []
    for sample in pending:
        state = found[sample.key]
        parts.append(f"{sample.key}: {_doing(state) if state is not None else 'not started yet'}")
    noun = "saga" if len(pending) == 1 else "sagas"
    return f"… waiting for {len(pending)} {noun}: " + "; ".join(parts)


def _doing(state: SagaState) -> str:
    """What a running or compensating saga waits for: an event, a reply, or a retry's
    backoff."""
    for awaiting in state.awaiting:
        return f"{awaiting.step} waits for {awaiting.event} {awaiting.value}"
    for step in state.steps:
        for kind, phase in (("action", step.action), ("compensation", step.compensation)):
            where = f"{step.name} {kind} #{phase.attempt}"
            if phase.waiting:
                return f"{where} sent, awaiting its reply"
            if phase.retry_at is not None:
                return f"{where} failed, retry scheduled"
    return state.status


def _timeline(sample: Sample, state: SagaState | None) -> str:
    if state is None:
        return f"✗ {sample.title}: no saga was started for key {sample.key}\n"
    mark = "✓" if state.status == sample.expect else "✗"
    saga = saga_out(state).model_dump(mode="json")
    history = [entry.model_dump(mode="json") for entry in state.history]
    return "\n".join([f"{mark} {sample.title}", *timeline(saga, history)]) + "\n"


async def _run(settings: CoordinatorSettings, run: str, *, keep: bool) -> int:
    samples = demo_samples(run)
    stop = asyncio.Event()
    ready = asyncio.Event()
    coordinator = asyncio.create_task(serve(settings, stop, ready=ready), name="coordinator")
    store = MongoSagaStore.connect(settings.mongodb_url, settings.mongodb_database)
    try:
        if not await until_ready(coordinator, ready):
            return 1
        print(
            f"coordinator ready; publishing {len(samples)} trigger events on "
            f"{settings.exchange_prefix}.events; each saga's timeline follows as it ends\n",
            flush=True,
        )
        async with example_participants(settings), _events(settings) as events:
            started = time.monotonic()
            missed = await _publish_events(events, store, samples)
            found = await _stream(store, events, samples, patience=90)
            elapsed = time.monotonic() - started
            good = sum(
                1
                for sample in samples
                if (state := found[sample.key]) is not None
                and state.status == sample.expect
                and sample.key not in missed
            )
            print(f"{good} of {len(samples)} sample sagas ended as expected, in {elapsed:.1f}s")
            if keep:
                await _keep_running(settings)
            else:
                print(
                    "\nTo look around afterwards: `saga-coordinator demo --keep` leaves the\n"
                    "service and its console running; `saga-coordinator dev --examples` runs\n"
                    "them with data that persists."
                )
        return 0 if good == len(samples) else 1
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await coordinator
        await _cleanup(settings, store)
        await store.close()


async def _keep_running(settings: CoordinatorSettings) -> None:
    """Serve until SIGINT/SIGTERM, with the URLs printed."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("\nThe service keeps running (--keep):")
    for what, url in service_urls(settings):
        print(f"  {what:<12} {url}")
    print(
        f"  saga-coordinator sagas list --url {base_url(settings)}\n"
        "Ctrl-C stops it and removes the demo's data.",
        flush=True,
    )
    await stop.wait()


async def _cleanup(settings: CoordinatorSettings, store: MongoSagaStore) -> None:
    """Remove the demo's queues, exchanges and database."""
    prefix = settings.exchange_prefix
    exchanges = Exchanges(prefix)
    queues = [
        f"{prefix}.coordinator.events",
        f"{prefix}.coordinator.replies",
        f"{prefix}.dead-letter",
        exchanges.unrouted,
    ]
    queues += [f"{prefix}.{module.NAME}.commands" for module in EXAMPLES]
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            for queue in queues:
                await channel.queue_delete(queue)
            for exchange in (
                exchanges.events,
                exchanges.commands,
                exchanges.replies,
                exchanges.dead_letter,
                exchanges.unrouted,
            ):
                await channel.exchange_delete(exchange)
    with contextlib.suppress(Exception):
        await store.drop_database()


def main(*, keep: bool = False) -> int:
    """``saga-coordinator demo [--keep]``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    base = CoordinatorSettings()
    problem = amqp_problem(base.amqp_url)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    run = uuid.uuid4().hex[:6]
    overrides: dict[str, Any] = {
        "exchange_prefix": f"saga-demo-{run}",
        "mongodb_database": f"saga_demo_{run}",
        "http_port": base.http_port if keep else free_port(),
        "definitions_dir": Path(schemas.__file__).parent,
        "timer_interval": 0.1,
    }
    with contextlib.ExitStack() as stack:
        if "mongodb_url" not in base.model_fields_set:
            print("starting an embedded MongoDB-compatible server (SecantusDB)", flush=True)
            overrides["mongodb_url"] = stack.enter_context(embedded_mongodb(free_port()))
        settings = base.model_copy(update=overrides)
        try:
            return asyncio.run(_run(settings, run, keep=keep))
        except (AdapterError, OSError) as exc:
            print(f"the demo cannot run: {exc}", file=sys.stderr)
            return 1
