"""``saga-coordinator dev``: the service on embedded defaults, until Ctrl-C.

No Docker and no MongoDB install: unless ``SAGA_MONGODB_URL`` is set, a MongoDB-compatible
server (SecantusDB) runs as a child process with its data in ``--data-dir`` (default
``.saga-dev/``), kept across runs. The coordinator (consumers, timers, REST API, console)
runs in this process; ``--examples`` adds the example participants and registers the
definitions of ``schemas/``. SIGINT or SIGTERM stops the participants, then the coordinator
(in-flight messages finish), then the database server; no process is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import schemas
from coordinator.app import serve
from coordinator.errors import AdapterError
from coordinator.local import (
    EXAMPLES,
    amqp_problem,
    base_url,
    embedded_mongodb,
    example_participants,
    mongodb_problem,
    port_in_use,
    redact,
    service_urls,
    until_ready,
)
from coordinator.logging import configure_logging
from coordinator.settings import CoordinatorSettings

__all__ = ["banner", "main"]

log = logging.getLogger("coordinator.dev")


def main(args: argparse.Namespace) -> int:
    """``saga-coordinator dev``: 0 after a clean Ctrl-C, 1 when it cannot start."""
    base = CoordinatorSettings()
    configure_logging(base.log_level, base.log_format)
    problem = amqp_problem(base.amqp_url)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    overrides: dict[str, Any] = {}
    if args.port is not None:
        overrides["http_port"] = args.port
    if args.examples:
        overrides["definitions_dir"] = Path(schemas.__file__).parent
    with contextlib.ExitStack() as stack:
        if "mongodb_url" not in base.model_fields_set:
            data_dir: Path = args.data_dir
            data_dir.mkdir(parents=True, exist_ok=True)
            if not _lock(stack, data_dir):
                print(
                    f"{data_dir}/ is in use by another `saga-coordinator dev`: stop it, or "
                    "pass another --data-dir",
                    file=sys.stderr,
                )
                return 1
            if port_in_use(args.db_port):
                print(
                    f"port {args.db_port} is taken: pass another --db-port, or set "
                    "SAGA_MONGODB_URL to use the MongoDB that listens there",
                    file=sys.stderr,
                )
                return 1
            output = stack.enter_context((data_dir / "database.log").open("ab"))
            print(f"starting the embedded database (data in {data_dir}/)", flush=True)
            overrides["mongodb_url"] = stack.enter_context(
                embedded_mongodb(args.db_port, data_dir / "db", output)
            )
        elif (problem := mongodb_problem(base.mongodb_url)) is not None:
            print(problem, file=sys.stderr)
            return 1
        settings = base.model_copy(update=overrides)
        try:
            return asyncio.run(_run(settings, examples=args.examples))
        except (AdapterError, ValueError, OSError) as exc:
            hint = "; pass another --port" if "cannot serve HTTP" in str(exc) else ""
            log.error("cannot run: %s%s", exc, hint)
            return 1


def _lock(stack: contextlib.ExitStack, data_dir: Path) -> bool:
    """Hold an exclusive lock on ``data_dir`` for the stack's lifetime; False if taken."""
    handle = stack.enter_context((data_dir / "lock").open("w"))
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


async def _run(settings: CoordinatorSettings, *, examples: bool) -> int:
    stop = asyncio.Event()
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    coordinator = asyncio.create_task(serve(settings, stop, ready=ready), name="coordinator")
    if not await until_ready(coordinator, ready):
        return 1
    try:
        async with contextlib.AsyncExitStack() as stack:
            if examples:
                await stack.enter_async_context(example_participants(settings))
            print(banner(settings, examples=examples), flush=True)
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([stopped, coordinator], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            print("stopping…", flush=True)
    finally:
        stop.set()
        await coordinator
    return 0


def banner(settings: CoordinatorSettings, *, examples: bool) -> str:
    """The URLs, what runs, and the variables that point other commands at this service."""
    lines = ["", "saga-coordinator dev is running:"]
    lines += [f"  {what:<12} {url}" for what, url in service_urls(settings)]
    lines += [
        f"  {'MongoDB':<12} {redact(settings.mongodb_url)}  (database {settings.mongodb_database})",
        f"  {'RabbitMQ':<12} {redact(settings.amqp_url)}  (exchanges {settings.exchange_prefix}.*)",
    ]
    if examples:
        names = ", ".join(module.NAME for module in EXAMPLES)
        lines.append(f"  {'examples':<12} {names}; definitions from schemas/")
    lines += [
        "",
        "Point other commands at it (in another terminal):",
        f"  export SAGA_MONGODB_URL={shlex.quote(settings.mongodb_url)}",
        f"  export SAGA_API_URL={base_url(settings)}",
    ]
    if settings.exchange_prefix != "saga":
        lines.append(f"  export SAGA_EXCHANGE_PREFIX={shlex.quote(settings.exchange_prefix)}")
    lines += ["  saga-coordinator sagas list", "", "Ctrl-C stops everything."]
    return "\n".join(lines)
