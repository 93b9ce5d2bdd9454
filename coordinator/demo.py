"""``saga-coordinator demo``: the whole product on embedded defaults, in one process.

It starts a MongoDB-compatible server (SecantusDB) when ``SAGA_MONGODB_URL`` is unset,
the coordinator (consumers, timers, REST API), the example participants and the
definitions in ``schemas/``; then it publishes trigger events the way any service would,
waits for each saga to end, and prints its timeline. Everything it creates is its own: a
fresh exchange prefix and database, removed at the end. Exit 0 when every sample saga
ended as expected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika

import schemas
from coordinator.adapters.mongo import MongoSagaStore
from coordinator.app import serve
from coordinator.embedded import EmbeddedServerError, server_url, start_server, stop_server
from coordinator.engine.state import HistoryEntry, SagaState
from coordinator.settings import CoordinatorSettings
from participants import Participant
from participants.examples import flights, hotels, inventory, payments, shipping
from schemas.envelope import Exchanges

__all__ = ["main"]

log = logging.getLogger("coordinator.demo")

CARD_OK = "4242-4242-4242-4242"
CARD_DECLINED = "4000-0000-0000-0002"
CARD_FLAKY = "4000-0000-0000-0119"
ORDER_ITEMS = [{"sku": "BOOK-42", "qty": 1}, {"sku": "MUG-7", "qty": 2}]


@dataclass(frozen=True)
class Sample:
    """One sample saga: the event that starts it and the status it should end in."""

    title: str
    event_type: str
    body: dict[str, Any]
    expect: str

    @property
    def definition(self) -> str:
        return "order-fulfillment" if self.event_type == "order.placed" else "trip-booking"

    @property
    def key(self) -> str:
        return str(self.body.get("order_id") or self.body.get("trip_id"))


def _samples(run: str) -> list[Sample]:
    def order(n: int, card: str, address: str) -> dict[str, Any]:
        return {
            "order_id": f"o-{run}-{n}",
            "items": ORDER_ITEMS,
            "total": 42.5,
            "card": card,
            "address": address,
        }

    trip = {
        "trip_id": f"t-{run}-1",
        "flight": "LH-400",
        "hotel": "Harbour View",
        "nights": 3,
        "total": 980,
        "card": CARD_OK,
    }
    return [
        Sample(
            "an order that completes", "order.placed", order(1, CARD_OK, "1 Main St"), "completed"
        ),
        Sample(
            "a card that fails once, retried, then completes",
            "order.placed",
            order(2, CARD_FLAKY, "2 Main St"),
            "completed",
        ),
        Sample(
            "a declined card: the stock is released",
            "order.placed",
            order(3, CARD_DECLINED, "3 Main St"),
            "compensated",
        ),
        Sample("a trip: flight, hotel and payment", "trip.requested", trip, "completed"),
        Sample(
            "a trip whose hotel is full: the flight is cancelled",
            "trip.requested",
            {**trip, "trip_id": f"t-{run}-2", "hotel": "FULL"},
            "compensated",
        ),
        Sample(
            "a hotel that never confirms in time: its booking and the flight are cancelled",
            "trip.requested",
            {**trip, "trip_id": f"t-{run}-3", "hotel": "slow:8s Grand Hotel"},
            "compensated",
        ),
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 3
        ):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _embedded_mongodb() -> Iterator[str]:
    """A SecantusDB server on a free port, in memory, for the demo's lifetime."""
    port = _free_port()
    with tempfile.TemporaryFile() as out:
        try:
            proc = start_server(port, output=out)
        except EmbeddedServerError as exc:
            out.seek(0)
            raise SystemExit(
                f"no MongoDB: set SAGA_MONGODB_URL, or {exc}\n"
                + out.read().decode(errors="replace")[-2000:]
            ) from exc
        try:
            yield server_url(port)
        finally:
            stop_server(proc)


@contextlib.asynccontextmanager
async def _participants(settings: CoordinatorSettings) -> AsyncIterator[list[Participant]]:
    prefix = settings.exchange_prefix
    built = [
        module.build(
            amqp_url=settings.amqp_url,
            mongodb_url=settings.mongodb_url,
            mongodb_database=settings.mongodb_database,
            exchange_prefix=prefix,
            queue=f"{prefix}.{module.NAME}.commands",
        )
        for module in (inventory, payments, shipping, flights, hotels)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for participant in built:
            await stack.enter_async_context(participant)
        yield built


async def _publish_events(settings: CoordinatorSettings, samples: list[Sample]) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(Exchanges(settings.exchange_prefix).events)
        for sample in samples:
            await exchange.publish(
                aio_pika.Message(
                    json.dumps(sample.body).encode(),
                    content_type="application/json",
                    message_id=uuid.uuid4().hex,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=sample.event_type,
            )


async def _wait_for(
    store: MongoSagaStore, samples: list[Sample], patience: float
) -> dict[str, SagaState | None]:
    """The saga of each sample once it has ended (or as it stands at the timeout)."""
    found: dict[str, SagaState | None] = {sample.key: None for sample in samples}
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        for sample in samples:
            state = await store.find_saga(sample.definition, sample.key)
            found[sample.key] = state
        if all(state is not None and state.status in _ENDED for state in found.values()):
            break
        await asyncio.sleep(0.2)
    return found


_ENDED = frozenset({"completed", "compensated", "failed"})


def _timeline(sample: Sample, state: SagaState | None) -> str:
    if state is None:
        return f"✗ {sample.title}: no saga was started for key {sample.key}\n"
    mark = "✓" if state.status == sample.expect else "✗"
    took = (state.updated_at - state.created_at).total_seconds()
    lines = [
        f"{mark} {sample.title}",
        f"  {state.definition} v{state.definition_version}  key={state.key}  "
        f"saga={state.id}  → {state.status} in {took:.2f}s",
    ]
    lines.extend(f"    {_entry(state.created_at, entry)}" for entry in state.history)
    if state.reason is not None:
        lines.append(f"  reason: {state.reason.code}: {state.reason.message}")
    return "\n".join(lines) + "\n"


def _entry(start: datetime, entry: HistoryEntry) -> str:
    offset = (entry.at - start).total_seconds()
    where = entry.step or ""
    if entry.kind is not None and entry.attempt is not None:
        where += f" {entry.kind} #{entry.attempt}"
    return f"+{offset:6.2f}s  {entry.event:<29} {where:<32} {_note(entry)}".rstrip()


def _note(entry: HistoryEntry) -> str:
    """The one detail of a history entry worth a reader's eye."""
    detail = entry.detail
    error = detail.get("error")
    if isinstance(error, dict):
        return f"{error.get('code')}: {error.get('message', '')}"[:70]
    if "delay_ms" in detail:
        return f"in {int(detail['delay_ms']) / 1000:.2f}s"
    if "reason" in detail:
        return str(detail["reason"])[:70]
    if "source" in detail:
        return str(detail["source"])
    return ""


async def _run(settings: CoordinatorSettings, run: str) -> int:
    samples = _samples(run)
    stop = asyncio.Event()
    ready = asyncio.Event()
    coordinator = asyncio.create_task(serve(settings, stop, ready=ready), name="coordinator")
    store = MongoSagaStore.connect(settings.mongodb_url, settings.mongodb_database)
    try:
        await asyncio.wait(
            [coordinator, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if coordinator.done():
            coordinator.result()
            return 1
        print(
            "coordinator ready (REST API on "
            f"http://{settings.http_host}:{settings.http_port}/docs); "
            f"publishing {len(samples)} events on {settings.exchange_prefix}.events\n"
        )
        async with _participants(settings):
            started = time.monotonic()
            await _publish_events(settings, samples)
            found = await _wait_for(store, samples, patience=90)
            elapsed = time.monotonic() - started
        for sample in samples:
            print(_timeline(sample, found[sample.key]))
        good = sum(
            1
            for sample in samples
            if (state := found[sample.key]) is not None and state.status == sample.expect
        )
        print(f"{good} of {len(samples)} sample sagas ended as expected, in {elapsed:.1f}s")
        return 0 if good == len(samples) else 1
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await coordinator
        await _cleanup(settings, store)
        await store.close()


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
    queues += [
        f"{prefix}.{name}.commands"
        for name in ("inventory", "payments", "shipping", "flights", "hotels")
    ]
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


def main() -> int:
    """``saga-coordinator demo``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    base = CoordinatorSettings()
    if not _reachable(base.amqp_url, 5672):
        print(
            f"RabbitMQ is not reachable at {urlsplit(base.amqp_url).hostname}:"
            f"{urlsplit(base.amqp_url).port or 5672}. Start it (`rabbitmq-server -detached`, "
            "or `docker compose up -d rabbitmq`) or set SAGA_AMQP_URL.",
            file=sys.stderr,
        )
        return 1
    run = uuid.uuid4().hex[:6]
    overrides: dict[str, Any] = {
        "exchange_prefix": f"saga-demo-{run}",
        "mongodb_database": f"saga_demo_{run}",
        "http_port": _free_port(),
        "definitions_dir": Path(schemas.__file__).parent,
        "timer_interval": 0.1,
    }
    with contextlib.ExitStack() as stack:
        if "mongodb_url" not in base.model_fields_set:
            print("starting an embedded MongoDB-compatible server (SecantusDB)")
            overrides["mongodb_url"] = stack.enter_context(_embedded_mongodb())
        settings = base.model_copy(update=overrides)
        return asyncio.run(_run(settings, run))
