"""Readiness (``GET /readyz``) through real outages of the coordinator's two dependencies.

- MongoDB: the test's own SecantusDB on disk is killed with ``kill -9``, then restarted on
  the same port and storage. The coordinator runs with the driver's default timeouts (a
  30 s server selection), so the probe's own 2 s bound is what keeps it prompt.
- RabbitMQ: only this coordinator's connection is force-closed from the broker side
  (``rabbitmqctl close_connection``), found by its ``connection_name`` client property; the
  other connections of the broker (other tests, other engineers' processes) are untouched.
  The robust connection reconnects after its 5 s ``reconnect_interval``, which leaves the
  outage observable for several polls.

In both, ``/readyz`` answers 503 with a problem document naming what is down, then 200 once
it is back, and ``/healthz`` (liveness) stays 200 throughout. Every probe answers within a
few seconds. The coordinator keeps running and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.helpers import (
    Broker,
    Coordinator,
    DatabaseServer,
    local_rabbitmqctl,
    rabbitmqctl,
)

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
#: The slowest answer a probe may give: the ping's 2 s bound, plus slack for a busy machine.
PROMPT = 3.5


class Probes:
    """``/readyz`` and ``/healthz`` of one coordinator, each answer timed."""

    def __init__(self, http: httpx.AsyncClient, coordinator: Coordinator) -> None:
        self.http = http
        self.coordinator = coordinator

    async def get(self, path: str) -> httpx.Response:
        began = time.monotonic()
        response = await self.http.get(path)
        took = time.monotonic() - began
        assert took < PROMPT, f"{path} took {took:.1f} s:\n{self.coordinator.log()[-4000:]}"
        return response

    async def wait_readiness(self, status: int, within: float) -> dict[str, Any]:
        """Poll ``/readyz`` until it answers ``status``; ``/healthz`` must stay 200."""
        deadline = time.monotonic() + within
        while True:
            live = await self.get("/healthz")
            assert live.status_code == 200 and live.json() == {"status": "ok"}, live.text
            response = await self.get("/readyz")
            body: dict[str, Any] = response.json()
            if response.status_code == status:
                return body
            assert response.status_code in (200, 503), response.text
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"/readyz did not answer {status} within {within} s; last: "
                    f"{response.status_code} {body}\n{self.coordinator.log()[-4000:]}"
                )
            await asyncio.sleep(0.1)


def assert_ready(body: dict[str, Any]) -> None:
    assert body == {"status": "ready", "checks": {"mongodb": "ok", "rabbitmq": "ok"}}, body


def assert_not_ready(response_body: dict[str, Any], down: str, up: str) -> None:
    assert response_body["status"] == 503, response_body
    assert response_body["title"] == "Service Unavailable", response_body
    checks = response_body["checks"]
    assert checks[up] == "ok", response_body
    assert checks[down] != "ok" and checks[down], response_body
    assert response_body["detail"].startswith(f"{down}: "), response_body
    assert up not in response_body["detail"], response_body


async def test_readyz_answers_503_while_mongodb_is_down_and_200_once_it_is_back(
    database_server: DatabaseServer,
    coordinators: Callable[..., Coordinator],
    broker: Broker,  # deletes the test's topology afterwards
) -> None:
    # The driver's default server selection timeout (30 s): the probe must not wait for it.
    coordinator = coordinators(SAGA_MONGODB_URL=database_server.url).start()
    await coordinator.wait_ready(within=30)
    async with httpx.AsyncClient(base_url=coordinator.url, timeout=10) as http:
        probes = Probes(http, coordinator)
        assert_ready(await probes.wait_readiness(200, within=5))

        database_server.kill()
        began = time.monotonic()
        await probes.wait_readiness(503, within=15)
        response = await probes.get("/readyz")  # still down: check the whole answer
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == PROBLEM
        assert_not_ready(response.json(), down="mongodb", up="rabbitmq")
        assert time.monotonic() - began < 15

        await asyncio.to_thread(database_server.start)
        assert_ready(await probes.wait_readiness(200, within=15))

    assert coordinator.proc is not None and coordinator.proc.poll() is None, coordinator.log()
    assert await coordinator.terminate() == 0, coordinator.log()[-4000:]


def _connection_pids(exe: str, connection_name: str) -> list[str]:
    """The broker's pids of the connections whose ``connection_name`` is the one given."""
    output = rabbitmqctl(
        exe, "-q", "--no-table-headers", "list_connections", "pid", "client_properties"
    )
    wanted = f'{{"connection_name","{connection_name}"}}'
    pids = []
    for line in output.splitlines():
        pid, _, properties = line.partition("\t")
        if wanted in properties:
            pids.append(pid.strip())
    return pids


async def test_readyz_answers_503_while_the_broker_connection_is_lost_and_200_once_restored(
    amqp_url: str,
    prefix: str,
    coordinators: Callable[..., Coordinator],
    broker: Broker,  # deletes the test's topology afterwards
) -> None:
    ctl = local_rabbitmqctl(amqp_url)
    coordinator = coordinators().start()
    await coordinator.wait_ready(within=30)
    assert coordinator.proc is not None
    # RabbitBroker's default connection name: unique to this test (prefix) and process (pid).
    name = f"saga-coordinator {prefix} {socket.gethostname()}:{coordinator.proc.pid}"
    [pid] = await asyncio.to_thread(_connection_pids, ctl, name)
    async with httpx.AsyncClient(base_url=coordinator.url, timeout=10) as http:
        probes = Probes(http, coordinator)
        assert_ready(await probes.wait_readiness(200, within=5))

        await asyncio.to_thread(rabbitmqctl, ctl, "close_connection", pid, "test_readiness")
        # The robust connection waits 5 s before reconnecting: polled every 0.1 s, the
        # outage cannot be missed.
        body = await probes.wait_readiness(503, within=5)
        assert_not_ready(body, down="rabbitmq", up="mongodb")

        assert_ready(await probes.wait_readiness(200, within=20))
        # Reconnected under the same name, on a new connection.
        [new_pid] = await asyncio.to_thread(_connection_pids, ctl, name)
        assert new_pid != pid
        response = await probes.get("/readyz")
        assert response.status_code == 200, response.text

    assert coordinator.proc.poll() is None, coordinator.log()[-4000:]
    assert await coordinator.terminate() == 0, coordinator.log()[-4000:]
