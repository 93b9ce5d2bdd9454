"""Helpers for the runtime tests: the coordinator as a subprocess, the broker, the database.

The coordinator under test is ``python -m coordinator run`` with ``SAGA_*`` variables that
point it at the test's database, exchange prefix, free HTTP port and definitions directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pymongo import AsyncMongoClient

from coordinator.embedded import server_url, start_server
from participants import Delivery, Participant
from schemas.envelope import Exchanges
from schemas.topology import declare_exchanges, queue_arguments

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("completed", "compensated", "failed")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Coordinator:
    """One ``python -m coordinator run`` process."""

    def __init__(
        self,
        *,
        amqp_url: str,
        mongodb_url: str,
        database: str,
        prefix: str,
        definitions_dir: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "SAGA_AMQP_URL": amqp_url,
            "SAGA_MONGODB_URL": mongodb_url,
            "SAGA_MONGODB_DATABASE": database,
            "SAGA_EXCHANGE_PREFIX": prefix,
            "SAGA_HTTP_PORT": str(self.port),
            "SAGA_DEFINITIONS_DIR": str(definitions_dir),
            "SAGA_TIMER_INTERVAL": "0.1",
            "SAGA_TIMER_LEASE": "3",
            "SAGA_RELAY_INTERVAL": "0.5",
            "SAGA_RELAY_AGE": "2",
            "SAGA_DEFINITIONS_REFRESH": "1",
            "SAGA_SHUTDOWN_GRACE": "5",
            "SAGA_LOG_LEVEL": "INFO",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Coordinator:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "coordinator", "run"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_ready(self, within: float = 60.0) -> None:
        """Poll ``/readyz`` until 200; fail with the log if the process exits first."""
        deadline = time.monotonic() + within
        # Above the 2 s that /readyz may take to ping a slow database (docs/operations.md).
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"coordinator exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
                    )
                try:
                    response = await client.get(f"{self.url}/readyz")
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"coordinator not ready:\n{self.log()[-4000:]}")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """``kill -9``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    async def terminate(self, within: float = 20.0) -> int:
        """SIGTERM, then wait for the exit code (without blocking the event loop)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + within
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"coordinator ignored SIGTERM:\n{self.log()[-4000:]}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def stop_now(self) -> None:
        """Teardown: make sure the process is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class DatabaseServer:
    """A SecantusDB process on a fixed port and an on-disk storage directory."""

    def __init__(self, storage: Path, log_path: Path) -> None:
        self.port = free_port()
        self.storage = storage
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return server_url(self.port)

    def start(self, within: float = 30.0) -> None:
        with self.log_path.open("ab") as out:
            self.proc = start_server(self.port, self.storage, output=out, within=within)

    def kill(self) -> None:
        """``kill -9``."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop_now(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Broker:
    """The test's own AMQP connection: publish events and replies, read dead letters."""

    def __init__(self, channel: AbstractChannel, prefix: str) -> None:
        self.channel = channel
        self.prefix = prefix
        self.exchanges = Exchanges(prefix)

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes | dict[str, Any] | list[Any],
        *,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        target = await self.channel.get_exchange(exchange, ensure=False)
        await target.publish(
            aio_pika.Message(
                raw,
                headers=headers or {},
                message_id=message_id or uuid.uuid4().hex,
                correlation_id=correlation_id,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key,
        )

    async def event(self, event_type: str, body: Any, *, message_id: str | None = None) -> None:
        await self.publish(self.exchanges.events, event_type, body, message_id=message_id)

    async def reply(
        self, body: bytes | dict[str, Any] | list[Any], headers: dict[str, Any], **kw: Any
    ) -> None:
        await self.publish(self.exchanges.replies, "coordinator", body, headers=headers, **kw)

    async def dead_letters(self, count: int, within: float = 20.0) -> list[AbstractIncomingMessage]:
        """Read (and ack) at least ``count`` messages from ``{prefix}.dead-letter``."""
        queue = await self.channel.get_queue(f"{self.prefix}.dead-letter", ensure=True)
        found: list[AbstractIncomingMessage] = []
        deadline = time.monotonic() + within
        while len(found) < count and time.monotonic() < deadline:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.1)
            else:
                found.append(message)
        return found

    async def silent_participant(self, name: str) -> AbstractQueue:
        """The command queue of a participant that never answers: its commands are routed
        (not returned as ``participant_unavailable``) and then wait there."""
        declared = await declare_exchanges(self.channel, self.exchanges)
        queue = await self.channel.declare_queue(
            f"{self.prefix}.{name}.commands",
            durable=True,
            arguments=queue_arguments(self.exchanges),
        )
        await queue.bind(declared.commands, routing_key=f"{name}.*")
        return queue

    async def delete_topology(self, participant_queues: Iterable[str] = ()) -> None:
        queues = [
            f"{self.prefix}.coordinator.events",
            f"{self.prefix}.coordinator.replies",
            f"{self.prefix}.dead-letter",
            f"{self.prefix}.unrouted",
            *participant_queues,
        ]
        for name in queues:
            try:
                await self.channel.queue_delete(name)
            except Exception:
                self.channel = await self.channel.connection.channel()  # type: ignore[attr-defined]
        ex = self.exchanges
        for name in (ex.events, ex.commands, ex.replies, ex.dead_letter, ex.unrouted):
            try:
                await self.channel.exchange_delete(name)
            except Exception:
                self.channel = await self.channel.connection.channel()  # type: ignore[attr-defined]


class Sagas:
    """Read-only access to the coordinator's ``sagas`` collection."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        self.collection = client[database]["sagas"]

    async def all(self) -> list[dict[str, Any]]:
        return [doc async for doc in self.collection.find({})]

    async def get(self, saga_id: str) -> dict[str, Any] | None:
        return await self.collection.find_one({"_id": saga_id})

    async def wait(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        *,
        within: float = 30.0,
        what: str = "sagas",
    ) -> list[dict[str, Any]]:
        """Poll every saga until ``predicate(docs)`` holds; fail after ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            docs = await self.all()
            if predicate(docs):
                return docs
            if time.monotonic() > deadline:
                statuses = Counter(doc["status"] for doc in docs)
                raise AssertionError(f"timed out waiting for {what}: {dict(statuses)}")
            await asyncio.sleep(0.2)

    async def wait_terminal(self, count: int, within: float = 30.0) -> list[dict[str, Any]]:
        return await self.wait(
            lambda docs: len(docs) >= count and all(d["status"] in TERMINAL for d in docs),
            within=within,
            what=f"{count} terminal sagas",
        )


def history_events(doc: dict[str, Any]) -> list[str]:
    return [entry["event"] for entry in doc["history"]]


Handler = Callable[[dict[str, Any], Delivery], Awaitable[dict[str, Any] | None]]


class Recorder:
    """Counts handler executions per idempotency key and keeps their order."""

    def __init__(self) -> None:
        self.executions: Counter[str] = Counter()
        self.order: list[tuple[str, str, str, int]] = []

    def note(self, delivery: Delivery) -> None:
        self.executions[delivery.idempotency_key] += 1
        self.order.append((delivery.saga_id, delivery.step, delivery.kind, delivery.attempt))

    def wrap(self, handler: Handler) -> Handler:
        async def recorded(input: dict[str, Any], delivery: Delivery) -> dict[str, Any] | None:
            self.note(delivery)
            return await handler(input, delivery)

        return recorded


def participant(
    name: str, *, amqp_url: str, mongodb_url: str, database: str, prefix: str
) -> Participant:
    """A participant of the SDK on the test's topology: queue ``{prefix}.{name}.commands``."""
    return Participant(
        name,
        amqp_url=amqp_url,
        mongodb_url=mongodb_url,
        database=database,
        prefix=prefix,
        queue=f"{prefix}.{name}.commands",
        stop_timeout=2.0,
        lease=5.0,
    )


@asynccontextmanager
async def running(*items: Participant) -> AsyncIterator[None]:
    """Start the participants; stop them (in reverse order) at the end."""
    async with AsyncExitStack() as stack:
        for item in items:
            await stack.enter_async_context(item)
        yield


def succeeding(
    recorder: Recorder, output: dict[str, Any] | None = None, *, delay: float = 0.0
) -> Handler:
    """A handler that records its execution, takes ``delay`` seconds and succeeds."""

    async def handler(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        recorder.note(delivery)
        if delay:
            await asyncio.sleep(delay)
        return dict(output or {"id": f"{delivery.step}-{delivery.saga_id}"})

    return handler


#: A two-step saga for the crash tests: many instances in flight, one compensation.
LOAD = """
name: load
version: 1
trigger: {event: order.placed, key: "${event.order_id}"}
defaults:
  timeout: 20s
  retry: {max_attempts: 3, backoff: 200ms, multiplier: 1.0}
steps:
  - name: reserve
    participant: a
    command: reserve
    compensation: {command: release}
  - name: charge
    participant: b
    command: charge
"""


def write(definitions_dir: Path, name: str, text: str) -> None:
    (definitions_dir / f"{name}.yaml").write_text(text)


# -- the local broker's control tool --------------------------------------------------------
def local_rabbitmqctl(amqp_url: str) -> str:
    """The ``rabbitmqctl`` executable, or skip: the broker must be this machine's."""
    host = urlsplit(amqp_url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip(f"the broker is at {host!r}: rabbitmqctl here cannot close its connections")
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        pytest.skip("rabbitmqctl is not on PATH: cannot force-close broker connections")
    return exe


def rabbitmqctl(exe: str, *args: str) -> str:
    """Run ``rabbitmqctl *args`` and return its output; fail the test if it fails."""
    done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"rabbitmqctl {args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout
