"""The composition root: builds settings, adapters and the service, and runs them.

``run()`` is ``saga-coordinator run``: MongoDB store, RabbitMQ broker, the saga service,
the two consumers, the timer, relay, definitions and outbox-clearing loops, and uvicorn
serving the HTTP app — all in one event loop. SIGTERM or SIGINT stops consuming, lets
in-flight messages finish (up to ``shutdown_grace``), flushes the outbox clears, closes the
connections and returns 0.

``register_files()`` is ``saga-coordinator register``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from coordinator.adapters.mongo import MongoSagaStore, RoundTripCounter, make_client
from coordinator.adapters.mongo_indexes import saga_index_paths
from coordinator.adapters.queries import SagaQueries
from coordinator.adapters.rabbit import IncomingEvent, IncomingReply, RabbitBroker
from coordinator.api import create_app
from coordinator.api.auth import parse_api_tokens, refuse_anonymous_bind
from coordinator.api.context import ApiContext
from coordinator.api.metrics import install_metrics
from coordinator.api.v1 import install_rest_api
from coordinator.console import install_console
from coordinator.definitions.loader import load_definition
from coordinator.engine.engine import Options
from coordinator.engine.messages import ReplyReceived
from coordinator.errors import (
    AdapterError,
    DefinitionConflict,
    DefinitionError,
    InputRejected,
)
from coordinator.logging import configure_logging
from coordinator.metrics import SagaMetrics
from coordinator.otel import OtelUnavailable, build_spans
from coordinator.service import SagaBusy, SagaService
from coordinator.settings import CoordinatorSettings

__all__ = ["register_files", "run", "serve"]

log = logging.getLogger("coordinator")

YAML_SUFFIXES = (".yaml", ".yml")


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_saga_id() -> str:
    return uuid.uuid4().hex


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (``run`` owns SIGTERM and SIGINT), and with
    an event set once it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()
        self.failed = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        except SystemExit:  # uvicorn's answer to a port it cannot bind (already logged)
            self.failed = self.should_exit = True
            return
        if self.started:
            self.listening.set()


def run() -> int:
    """``saga-coordinator run``: serve until SIGTERM/SIGINT; 0 on a clean stop."""
    settings = CoordinatorSettings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(_main(settings))
    except (AdapterError, ValueError, OSError, OtelUnavailable) as exc:
        log.error("cannot run: %s", exc)
        return 1
    return 0


async def _main(settings: CoordinatorSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


async def serve(
    settings: CoordinatorSettings,
    stop: asyncio.Event,
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the whole service until ``stop`` is set, then shut down gracefully.

    Args:
        settings: the configuration.
        stop: set it to stop (``run`` sets it on SIGTERM/SIGINT).
        ready: set once the consumers run and the HTTP server listens.

    Raises:
        AdapterError: MongoDB or RabbitMQ did not answer at start-up.
        ValueError: ``api_tokens`` cannot be parsed, or the API would be open beyond
            loopback without ``api_allow_anonymous``.
    """
    tokens = parse_api_tokens(settings.api_tokens)  # a bad value stops the start-up
    refuse_anonymous_bind(
        settings.http_host, tokens, allow_anonymous=settings.api_allow_anonymous
    )  # an open API beyond loopback, unless allowed on purpose, stops it too
    spans = build_spans(settings.otel_enabled)  # OtelUnavailable stops the start-up
    counter = RoundTripCounter(saga_index_paths())
    client = make_client(settings.mongodb_url, counter=counter)  # store and queries share it
    metrics = SagaMetrics(round_trips=lambda: counter.counts)
    store = MongoSagaStore(
        client,
        settings.mongodb_database,
        owns_client=True,
        max_saga_bytes=settings.max_saga_bytes,
    )
    queries = SagaQueries(client, settings.mongodb_database)
    broker = RabbitBroker(
        settings.amqp_url,
        prefix=settings.exchange_prefix,
        reply_to=settings.reply_to,
        prefetch=settings.prefetch,
        max_message_bytes=settings.max_message_bytes,
        max_json_depth=settings.max_json_depth,
        max_deliveries=settings.max_deliveries,
        retry_delay=settings.retry_delay,
        max_retry_delay=settings.max_retry_delay,
        publish_timeout=settings.publish_timeout,
        transient=lambda exc: isinstance(exc, SagaBusy),
        observer=metrics,
    )
    try:
        await store.ensure_indexes()
        await queries.ensure_indexes()
        await broker.connect()
        service = SagaService(
            store,
            broker,
            options=Options(reply_to=settings.reply_to),
            clock=utc_now,
            random=random.random,
            new_id=new_saga_id,
            relay_age=timedelta(seconds=settings.relay_age),
            timer_lease=timedelta(seconds=settings.timer_lease),
            batch=settings.timer_batch,
            trigger_binder=broker.bind_events,
            metrics=metrics,
            spans=spans,
            state_cache_bytes=settings.state_cache_bytes,
        )
        metrics.track_service(lambda: service.stats)  # conflicts, relays, timers… at scrape
        if settings.definitions_dir is not None:
            await _register_dir(service, settings.definitions_dir)
        await service.refresh_definitions()
        context = ApiContext(store=store, service=service, queries=queries, tokens=tokens)
        app = create_app(
            store=store,
            broker_open=lambda: broker.is_open,
            install=[
                functools.partial(install_rest_api, context=context),
                functools.partial(install_console, context=context, counts=queries.in_flight),
                functools.partial(install_metrics, metrics=metrics, in_flight=queries.in_flight),
            ],
        )
        await _run_until_stopped(settings, app, broker, service, stop, ready)
        log.info(
            "stopped: %d transitions, %d conflicts retried, %d commands published, "
            "%d relayed, %d timers fired, %d MongoDB commands, %d outbox entries cleared, "
            "%d write statements, %d bytes written, %d index entries maintained",
            service.stats.transitions,
            service.stats.conflicts,
            service.stats.published,
            service.stats.relayed,
            service.stats.timers_fired,
            counter.total,
            service.stats.outbox_cleared,
            counter.write_statements,
            counter.write_bytes,
            counter.index_writes,
        )
    finally:
        await broker.close()
        await store.close()


async def _run_until_stopped(
    settings: CoordinatorSettings,
    app: FastAPI,
    broker: RabbitBroker,
    service: SagaService,
    stop: asyncio.Event,
    ready: asyncio.Event | None,
) -> None:
    async def on_event(event: IncomingEvent) -> str | None:
        try:
            await service.on_event(
                event.event_type, event.body, event.message_id, event.traceparent
            )
        except InputRejected as rejected:
            return rejected.reason
        return None

    async def on_reply(reply: IncomingReply) -> str | None:
        received = ReplyReceived(
            step=reply.step,
            kind=reply.kind,
            attempt=reply.attempt,
            reply=reply.reply,
            at=utc_now(),
            message_id=reply.message_id,
        )
        try:
            await service.on_reply(reply.saga_id, received)
        except InputRejected as rejected:
            return rejected.reason
        return None

    returns = _Returns(on_reply, settings.retry_delay, settings.max_retry_delay)
    broker.on_returned = returns.submit

    server = _Server(
        uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    loops = [
        asyncio.create_task(service.run_outbox_clearer(), name="outbox-clearer"),
        asyncio.create_task(
            _every(settings.timer_interval, service.fire_due_timers, stop), name="timers"
        ),
        asyncio.create_task(
            _every(settings.relay_interval, service.relay_unpublished, stop), name="relay"
        ),
        asyncio.create_task(
            _every(settings.definitions_refresh, service.refresh_definitions, stop),
            name="definitions",
        ),
    ]
    http = asyncio.create_task(server.serve(), name="http")
    listening = asyncio.create_task(server.listening.wait())
    await asyncio.wait([listening, http], return_when=asyncio.FIRST_COMPLETED)
    listening.cancel()
    if server.started:  # consume only once the HTTP side is up
        await broker.start_consuming(on_event, on_reply)
        log.info(
            "coordinator running: queues %s and %s, HTTP on %s:%d",
            broker.names.events_queue,
            broker.names.replies_queue,
            settings.http_host,
            settings.http_port,
        )
        if ready is not None:
            ready.set()
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([stopped, http], return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping: no new messages; finishing those in flight")
    await broker.stop_consuming(settings.shutdown_grace)
    await returns.drain(settings.shutdown_grace)
    for task in loops[1:]:
        task.cancel()
    await asyncio.gather(*loops[1:], return_exceptions=True)
    try:
        await service.flush_outbox()
    except AdapterError as exc:
        log.warning("outbox entries left for the relay: %s", exc)
    loops[0].cancel()
    stopped.cancel()
    server.should_exit = True
    await asyncio.gather(loops[0], http, stopped, return_exceptions=True)
    if server.failed:
        raise OSError(f"cannot serve HTTP on {settings.http_host}:{settings.http_port}")


class _Returns:
    """Feeds the failed attempts of returned commands to the reply handler, in the background.

    A return arrives while the transition that published the command is still publishing,
    so it cannot be applied in line. Each runs in a task of its own: an unavailable
    dependency is retried with backoff, anything else is logged. A failure that is never
    applied (the process stops first) leaves the attempt to its timeout.
    """

    def __init__(
        self, handle: Callable[[IncomingReply], Awaitable[object]], delay: float, max_delay: float
    ) -> None:
        self._handle = handle
        self._delay = delay
        self._max_delay = max_delay
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, reply: IncomingReply) -> None:
        task = asyncio.create_task(self._apply(reply), name="returned-command")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply(self, reply: IncomingReply) -> None:
        pause = self._delay
        while True:
            try:
                await self._handle(reply)
                return
            except (AdapterError, SagaBusy) as exc:
                log.warning("returned command of saga %s: %s; retrying", reply.saga_id, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self._max_delay)
            except Exception:
                log.exception("applying the return of a command of saga %s failed", reply.saga_id)
                return

    async def drain(self, grace: float) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()


async def _every(
    interval: float, action: Callable[[], Awaitable[object]], stop: asyncio.Event
) -> None:
    """Run ``action`` every ``interval`` seconds until ``stop``; errors are logged."""
    name = getattr(action, "__name__", "loop")
    while not stop.is_set():
        try:
            result = await action()
        except AdapterError as exc:
            log.warning("%s: %s", name, exc)
            result = None
        except Exception:
            log.exception("%s failed", name)
            result = None
        # A full batch of timers means more may be due: poll again at once.
        if isinstance(result, int) and result >= 100:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def _read_files(paths: Sequence[str | Path]) -> list[tuple[str, bytes | OSError]]:
    """Each file's bytes, or why it could not be read (synchronous: start-up only)."""
    read: list[tuple[str, bytes | OSError]] = []
    for path in paths:
        try:
            read.append((str(path), Path(path).read_bytes()))
        except OSError as exc:
            read.append((str(path), exc))
    return read


def _yaml_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        log.error("definitions directory %s does not exist", directory)
        return []
    return sorted(
        path
        for path in directory.iterdir()
        if path.suffix.lower() in YAML_SUFFIXES and path.is_file()
    )


async def _register_dir(service: SagaService, directory: Path) -> None:
    """Register every YAML file of ``directory``; a bad file is logged, not fatal."""
    for name, raw in _read_files(_yaml_files(directory)):
        try:
            if isinstance(raw, OSError):
                raise raw
            definition = load_definition(raw, name)
            outcome = await service.register_definition(definition, raw.decode("utf-8"))
        except DefinitionError as exc:
            log.error("definition %s not registered:\n%s", name, exc)
        except DefinitionConflict as exc:
            log.error("definition %s not registered: %s", name, exc)
        except (OSError, UnicodeDecodeError) as exc:
            log.error("definition %s not readable: %s", name, exc)
        else:
            log.info("definition %s: %s", name, outcome)


def register_files(files: Sequence[str]) -> int:
    """``saga-coordinator register FILE…``: validate and store; 1 if any file failed."""
    settings = CoordinatorSettings()
    configure_logging(settings.log_level, settings.log_format)
    return asyncio.run(_register_files(settings, files))


async def _register_files(settings: CoordinatorSettings, files: Sequence[str]) -> int:
    store = MongoSagaStore.connect(settings.mongodb_url, settings.mongodb_database)
    failed = False
    try:
        await store.ensure_indexes()
        for name, raw in _read_files(files):
            try:
                if isinstance(raw, OSError):
                    raise raw
                definition = load_definition(raw, name)
                outcome = await store.register_definition(definition, raw.decode("utf-8"))
            except DefinitionError as exc:
                failed = True
                for error in exc.errors:
                    print(error)
            except DefinitionConflict as exc:
                failed = True
                print(f"{name}: {exc}")
            except (OSError, UnicodeDecodeError) as exc:
                failed = True
                print(f"{name}: cannot read the file: {exc}")
            else:
                print(f"{name}: {'registered' if outcome == 'created' else 'identical'}")
    except AdapterError as exc:
        print(f"cannot register: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    return 1 if failed else 0
