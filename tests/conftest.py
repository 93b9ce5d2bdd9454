"""Real-server fixtures: a SecantusDB process (or ``SAGA_TEST_MONGODB_URL``) and RabbitMQ.

The chain: a session-scoped server, a readiness probe, then per-test names (database,
exchange prefix) made from a uuid so that tests never see each other's data.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from coordinator.embedded import (
    EmbeddedServerError,
    server_url,
    start_server,
    stop_server,
    wait_until_answering,
)

ROOT = Path(__file__).resolve().parent.parent
AMQP_URL = os.environ.get("SAGA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def mongodb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB URL: ``SAGA_TEST_MONGODB_URL``, or a SecantusDB started for the session."""
    external = os.environ.get("SAGA_TEST_MONGODB_URL")
    try:
        if external:
            wait_until_answering(external)
            yield external
            return
        port = free_port()
        log = tmp_path_factory.mktemp("secantus") / "server.log"
        with log.open("wb") as out:
            proc = start_server(port, output=out)
    except EmbeddedServerError as exc:
        raise pytest.UsageError(
            f"{exc}; or set SAGA_TEST_MONGODB_URL to a MongoDB server (log: "
            f"{'none' if external else log})"
        ) from exc
    try:
        yield server_url(port)
    finally:
        stop_server(proc)


@pytest.fixture
def database_name() -> str:
    """A fresh database name per test."""
    return f"t_{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def mongo(
    mongodb_url: str, database_name: str
) -> AsyncIterator[AsyncMongoClient[dict[str, object]]]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongodb_url)
    try:
        yield client
    finally:
        await client.drop_database(database_name)
        await client.close()


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """RabbitMQ's URL, after checking that it answers the AMQP protocol header."""
    host, port = "127.0.0.1", 5672
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                if sock.recv(8):
                    return AMQP_URL
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise pytest.UsageError(
                "RabbitMQ does not answer on 127.0.0.1:5672: start it with "
                "`rabbitmq-server -detached`"
            )
        time.sleep(0.2)


@pytest.fixture
def prefix() -> str:
    """An exchange and queue prefix per test, so tests never share topology."""
    return f"t{uuid.uuid4().hex[:12]}"
