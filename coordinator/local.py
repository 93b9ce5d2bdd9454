"""What ``dev`` and ``demo`` share: reachability checks with one-line hints, the embedded
MongoDB-compatible server, the wait for the coordinator to be ready, the example
participants, and the service's URLs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from pymongo import MongoClient
from pymongo.errors import ConfigurationError, PyMongoError
from pymongo.uri_parser import parse_uri

from coordinator.embedded import EmbeddedServerError, server_url, start_server, stop_server
from coordinator.settings import CoordinatorSettings
from participants import Participant
from participants.examples import flights, hotels, inventory, payments, risk, shipping

__all__ = [
    "EXAMPLES",
    "amqp_problem",
    "base_url",
    "embedded_mongodb",
    "example_participants",
    "free_port",
    "mongodb_problem",
    "redact",
    "service_urls",
    "until_ready",
]

#: The example participants' modules (``participants/examples``).
EXAMPLES = (inventory, risk, payments, shipping, flights, hotels)

DEFAULT_PREFIX = "saga"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def amqp_problem(url: str) -> str | None:
    """``None`` when something listens at the broker's address, else what to do about it."""
    parts = urlsplit(url.split(",", 1)[0])
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        with socket.create_connection((host, port), 3):
            return None
    except OSError:
        return (
            f"RabbitMQ is not reachable at {host}:{port}. Start it (`rabbitmq-server "
            "-detached`, or `docker compose up -d rabbitmq`) or set SAGA_AMQP_URL."
        )


def mongodb_problem(url: str, within: float = 4.0) -> str | None:
    """``None`` when the MongoDB at ``url`` answers ``ping`` within ``within`` seconds, else
    one line naming the address and the way out (instead of a topology dump 30 s later)."""
    try:
        hosts = ", ".join(f"{host}:{port}" for host, port in parse_uri(url)["nodelist"]) or url
    except (ConfigurationError, ValueError):
        hosts = redact(url)
    client: MongoClient[dict[str, object]] = MongoClient(
        url, serverSelectionTimeoutMS=int(within * 1000), connectTimeoutMS=int(within * 1000)
    )
    try:
        client.admin.command("ping")
        return None
    except PyMongoError:
        return (
            f"no MongoDB at {hosts}: start one, or run `saga-coordinator dev` and point "
            "SAGA_MONGODB_URL at the server it prints"
        )
    finally:
        client.close()


@contextlib.contextmanager
def embedded_mongodb(
    port: int, storage: str | Path = ":memory:", output: IO[bytes] | int = subprocess.DEVNULL
) -> Iterator[str]:
    """A SecantusDB server on ``127.0.0.1:port`` for the block's lifetime; yields its URL.

    It runs in a session of its own, so a Ctrl-C in the terminal reaches only this process,
    which then stops the server after the coordinator has finished with it; should this
    process be killed outright, the kernel stops the server (Linux).

    Raises:
        SystemExit: the server is not installed, or did not start (with the reason).
    """
    try:
        proc = start_server(port, storage, output=output, new_session=True, die_with_parent=True)
    except EmbeddedServerError as exc:
        raise SystemExit(f"no MongoDB: set SAGA_MONGODB_URL, or {exc}") from exc
    try:
        yield server_url(port)
    finally:
        stop_server(proc)


@contextlib.asynccontextmanager
async def example_participants(settings: CoordinatorSettings) -> AsyncIterator[list[Participant]]:
    """The example participants, running on the coordinator's broker, database and prefix.

    Under the default prefix they consume the queues ``python -m participants.examples.<name>``
    uses (``<name>.commands``); under another prefix, ``<prefix>.<name>.commands``.
    """
    prefix = settings.exchange_prefix
    built = [
        module.build(
            amqp_url=settings.amqp_url,
            mongodb_url=settings.mongodb_url,
            mongodb_database=settings.mongodb_database,
            exchange_prefix=prefix,
            queue=None if prefix == DEFAULT_PREFIX else f"{prefix}.{module.NAME}.commands",
        )
        for module in EXAMPLES
    ]
    async with contextlib.AsyncExitStack() as stack:
        for participant in built:
            await stack.enter_async_context(participant)
        yield built


async def until_ready(coordinator: asyncio.Task[None], ready: asyncio.Event) -> bool:
    """Wait until the coordinator (``serve`` in a task) is ready, or stopped: ``False``
    when it stopped first (it raises what stopped it, if anything did)."""
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait([coordinator, waiting], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if coordinator.done():
        coordinator.result()
        return False
    return True


def base_url(settings: CoordinatorSettings) -> str:
    """Where the service answers, as other commands on this machine reach it."""
    host = settings.http_host if settings.http_host not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{settings.http_port}"


def service_urls(settings: CoordinatorSettings) -> list[tuple[str, str]]:
    """(what, URL) of each page the service serves."""
    base = base_url(settings)
    return [
        ("REST API", f"{base}/v1/sagas"),
        ("Swagger UI", f"{base}/docs"),
        ("OpenAPI", f"{base}/openapi.json"),
        ("console", f"{base}/ui"),
        ("metrics", f"{base}/metrics"),
    ]
