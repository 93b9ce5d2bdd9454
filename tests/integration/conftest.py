"""Fixtures of the runtime tests: a definitions directory, the coordinator process factory,
the test's broker connection, the sagas collection, clean-up of the test's topology, a
database server of the test's own, and the fault tests' workload."""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aio_pika
import pytest
from pymongo import AsyncMongoClient

from participants import Participant
from tests.integration.helpers import Broker, Coordinator, DatabaseServer, Sagas, participant

if TYPE_CHECKING:
    from tests.integration.faults import Workload


@pytest.fixture
def definitions_dir(tmp_path: Path) -> Path:
    path = tmp_path / "definitions"
    path.mkdir()
    return path


@pytest.fixture
def coordinators(
    amqp_url: str,
    mongodb_url: str,
    database_name: str,
    prefix: str,
    definitions_dir: Path,
    tmp_path: Path,
) -> Iterator[Callable[..., Coordinator]]:
    """A factory of coordinator processes for this test; every one is killed at the end."""
    made: list[Coordinator] = []

    def make(**env: str) -> Coordinator:
        coordinator = Coordinator(
            amqp_url=amqp_url,
            mongodb_url=mongodb_url,
            database=database_name,
            prefix=prefix,
            definitions_dir=definitions_dir,
            log_path=tmp_path / f"coordinator-{len(made)}.log",
            env=env,
        )
        made.append(coordinator)
        return coordinator

    yield make
    for coordinator in made:
        coordinator.stop_now()


@pytest.fixture
async def broker(amqp_url: str, prefix: str) -> AsyncIterator[Broker]:
    """The test's AMQP side; deletes the test's queues and exchanges afterwards."""
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        test_broker = Broker(channel, prefix)
        yield test_broker
        await test_broker.delete_topology(
            f"{prefix}.{name}.commands"
            for name in ("a", "b", "c", "inventory", "payments", "manual", "slow")
        )
    finally:
        await connection.close()


@pytest.fixture
def sagas(mongo: AsyncMongoClient[dict[str, Any]], database_name: str) -> Sagas:
    return Sagas(mongo, database_name)


@pytest.fixture
def participants(
    amqp_url: str, mongodb_url: str, database_name: str, prefix: str
) -> Callable[[str], Participant]:
    """A factory of SDK participants on the test's topology."""

    def make(name: str) -> Participant:
        return participant(
            name, amqp_url=amqp_url, mongodb_url=mongodb_url, database=database_name, prefix=prefix
        )

    return make


@pytest.fixture
def database_server(tmp_path: Path) -> Iterator[DatabaseServer]:
    """The test's own SecantusDB on disk, which it may ``kill -9`` and start again."""
    if os.environ.get("SAGA_TEST_MONGODB_URL"):
        pytest.skip("SAGA_TEST_MONGODB_URL names an external MongoDB that this test cannot kill -9")
    server = DatabaseServer(tmp_path / "db", tmp_path / "secantus.log")
    server.start()
    yield server
    server.stop_now()


@pytest.fixture
def fault_workload(
    definitions_dir: Path,
    amqp_url: str,
    mongo: AsyncMongoClient[dict[str, Any]],
    mongodb_url: str,
    database_name: str,
    prefix: str,
) -> Callable[..., Workload]:
    """``faults.workload(total, delay=…)`` on the test's definitions, broker and database."""
    from tests.integration.faults import workload

    return functools.partial(
        workload,
        definitions_dir=definitions_dir,
        amqp_url=amqp_url,
        mongo=mongo,
        mongodb_url=mongodb_url,
        database=database_name,
        prefix=prefix,
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures of the fault tests that ran (``tests/integration/faults.py``)."""
    from tests.integration.faults import RECORDED

    if RECORDED:
        terminalreporter.section("fault figures")
        for figures in RECORDED:
            terminalreporter.write_line(figures.line())
