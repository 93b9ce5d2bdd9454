"""RabbitMQ: the only aio-pika code of the coordinator.

Theory of operation
-------------------
``RabbitBroker`` owns one robust connection (to the first answering broker of
``SAGA_AMQP_URL``, failing over to the next on every reconnection: ``schemas.brokers``) and
two channels: a consuming channel (QoS = ``prefetch``) and a publishing channel with
publisher confirms. It declares the topology of SPEC §3 (exchanges through
``schemas.topology``, as the participant SDK does), the coordinator's two quorum queues,
the dead-letter queue that keeps every rejected message, and the ``unrouted`` queue that
keeps events nothing is bound to.

Every delivery goes through ``schemas.consuming.Consumer``, the taxonomy shared with the
SDK: the codec (``coordinator.adapters.wire``) rejects a bad message, which is
dead-lettered with ``x-saga-rejection``; ``AdapterError`` from the handler (MongoDB or
RabbitMQ unavailable), or ``transient`` as the composition root widens it, holds the
message and retries it with backoff; anything else is a bug, tried ``max_deliveries`` times
in all, counted by the consumer itself (``x-saga-tries``), then dead-lettered with the error.

Commands are published ``mandatory`` and confirmed within ``publish_timeout``. A command the
broker returns (no queue bound for its participant) is handed to ``on_returned`` as the
reply ``{"code": "participant_unavailable", "retryable": true}`` for its attempt: the
composition root feeds it to the service like a participant's reply. The returned command
counts as published (its outbox entry is cleared): if the process dies before the failure
is applied, the attempt's timeout fires instead.

aio-pika errors are re-raised as ``BrokerUnavailable`` here and go no further.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, TypeVar, cast

import aio_pika
import aiormq
import pamqp.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from coordinator.adapters.wire import (
    IncomingEvent,
    IncomingReply,
    RawMessage,
    Undecodable,
    decode_event,
    decode_reply,
    encode_command,
)
from coordinator.engine.state import Command
from coordinator.errors import AdapterError, BrokerUnavailable, UnstorableData
from schemas.brokers import connect, redacted, split_urls
from schemas.codec import DEFAULT_MAX_DEPTH, BadMessage, attempt_header, header_text
from schemas.consuming import Consumer, RetryPolicy
from schemas.envelope import (
    HEADER_KIND,
    HEADER_SAGA_ID,
    HEADER_STEP,
    Exchanges,
    FailedReply,
    Kind,
    ReplyError,
)
from schemas.topology import declare_exchanges, declare_unrouted, queue_arguments

__all__ = [
    "BrokerNames",
    "BrokerObserver",
    "IncomingEvent",
    "IncomingReply",
    "RabbitBroker",
    "RawMessage",
    "Undecodable",
    "decode_event",
    "decode_reply",
    "returned_reply",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    pamqp.exceptions.PAMQPException,
    ConnectionError,
    OSError,
    RuntimeError,
    asyncio.TimeoutError,
)


@contextmanager
def _broker_errors(what: str) -> Iterator[None]:
    """Re-raise aio-pika / aiormq failures as ``BrokerUnavailable``, chained."""
    try:
        yield
    except AdapterError:
        raise
    except _DRIVER_ERRORS as exc:
        raise BrokerUnavailable(f"RabbitMQ: {what} failed: {exc!r}") from exc


def returned_reply(command: Command) -> IncomingReply | None:
    """The failed attempt a returned (unroutable) command stands for; ``None`` if unreadable."""
    headers = command.headers
    saga_id = header_text(headers.get(HEADER_SAGA_ID))
    step = header_text(headers.get(HEADER_STEP))
    kind = header_text(headers.get(HEADER_KIND))
    try:
        attempt = attempt_header(headers)
    except BadMessage:
        return None
    if not saga_id or not step or kind not in ("action", "compensation"):
        return None
    error = ReplyError(
        code="participant_unavailable",
        message=f"no queue is bound for {command.routing_key!r}: the broker returned the command",
        retryable=True,
    )
    return IncomingReply(
        saga_id=saga_id,
        step=step,
        kind=cast(Kind, kind),
        attempt=attempt,
        reply=FailedReply(status="failed", error=error),
        message_id=command.message_id,
    )


EventHandler = Callable[[IncomingEvent], Awaitable[str | None]]
ReplyHandler = Callable[[IncomingReply], Awaitable[str | None]]
ReturnedHandler = Callable[[IncomingReply], None]


class BrokerObserver(Protocol):
    """What the broker reports for metrics (``coordinator.metrics.SagaMetrics``)."""

    def dead_lettered(self, queue: str, category: str) -> None:
        """A message of ``queue`` (``events`` or ``replies``) was dead-lettered."""
        ...

    def handler_failed(self, queue: str) -> None:
        """Handling a message of ``queue`` raised an unexpected error (a bug)."""
        ...

    def confirmed(self, seconds: float) -> None:
        """A command was confirmed by the broker ``seconds`` after it was published."""
        ...

    def returned(self) -> None:
        """The broker returned a command: no queue is bound for its participant."""
        ...


class _NoObserver:
    def dead_lettered(self, queue: str, category: str) -> None:
        pass

    def handler_failed(self, queue: str) -> None:
        pass

    def confirmed(self, seconds: float) -> None:
        pass

    def returned(self) -> None:
        pass


class BrokerNames:
    """Exchange and queue names under one prefix."""

    def __init__(self, prefix: str, reply_to: str) -> None:
        self.exchanges = Exchanges(prefix)
        self.reply_to = reply_to
        self.events_queue = f"{prefix}.coordinator.events"
        self.replies_queue = f"{prefix}.coordinator.replies"
        self.dead_letter_queue = f"{prefix}.dead-letter"


class RabbitBroker:
    """Connection, topology, publisher (``Publisher`` port) and consumers.

    Args:
        url: One AMQP URL or several, comma-separated (the nodes of a cluster).
        max_deliveries: Tries of a message whose handling fails unexpectedly.
        retry_delay: The first pause before retrying (doubling up to ``max_retry_delay``
            while a dependency is unavailable).
        publish_timeout: Seconds to wait for a broker confirm before giving up
            (``BrokerUnavailable``).
        transient: Besides ``AdapterError``, what else means "hold and retry" (contention).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "saga",
        reply_to: str = "coordinator",
        prefetch: int = 64,
        max_message_bytes: int = 1024 * 1024,
        max_json_depth: int = DEFAULT_MAX_DEPTH,
        max_deliveries: int = 5,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
        publish_timeout: float = 15.0,
        transient: Callable[[BaseException], bool] | None = None,
        observer: BrokerObserver | None = None,
        connection_name: str | None = None,
    ) -> None:
        self.urls = split_urls(url)
        self.connection_name = connection_name or (
            f"saga-coordinator {prefix} {socket.gethostname()}:{os.getpid()}"
        )
        """Sent as the ``connection_name`` client property: how the broker (``rabbitmqctl
        list_connections client_properties``, the management UI) tells this connection apart."""
        self.observer: BrokerObserver = observer if observer is not None else _NoObserver()
        self.names = BrokerNames(prefix, reply_to)
        self.prefetch = prefetch
        self.max_message_bytes = max_message_bytes
        self.max_json_depth = max_json_depth
        self.max_deliveries = max_deliveries
        self.policy = RetryPolicy(
            max_tries=max_deliveries,
            delay=retry_delay,
            max_delay=max_retry_delay,
            publish_timeout=publish_timeout,
        )
        self.publish_timeout = publish_timeout
        self.published = 0
        self.on_returned: ReturnedHandler | None = None
        """Called with the failed attempt of every command the broker returns."""
        extra = transient or (lambda _exc: False)
        # Unstorable data is an adapter's error too, but retrying it can never help.
        self._transient: Callable[[BaseException], bool] = lambda exc: (
            (isinstance(exc, AdapterError) and not isinstance(exc, UnstorableData)) or extra(exc)
        )
        self._connection: AbstractRobustConnection | None = None
        self._consume_channel: AbstractChannel | None = None
        self._publish_channel: AbstractChannel | None = None
        self._commands: AbstractExchange | None = None
        self._events_queue: AbstractQueue | None = None
        self._replies_queue: AbstractQueue | None = None
        self._bound: set[str] = set()
        self._bind_lock = asyncio.Lock()
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._handlers: list[Consumer] = []
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The first URL (what a single-broker deployment configured)."""
        return self.urls[0]

    @property
    def is_open(self) -> bool:
        """Whether the connection is up now, with both channels open (``/readyz``).

        A robust connection's ``is_closed`` turns true only on ``close()``: after the broker
        drops it, and while it reconnects, it is not closed but not connected either, and
        its channels are closed until it restores them.
        """
        connection = self._connection
        if connection is None or connection.is_closed or not connection.connected.is_set():
            return False
        channels = (self._consume_channel, self._publish_channel)
        return all(channel is not None and not channel.is_closed for channel in channels)

    async def connect(self) -> None:
        """Connect (robust: reconnects and restores consumers) and declare the topology."""
        with _broker_errors("connect"):
            self._connection = await connect(
                self.urls, client_properties={"connection_name": self.connection_name}
            )
            self._consume_channel = await self._connection.channel()
            await self._consume_channel.set_qos(prefetch_count=self.prefetch)
            self._publish_channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            await self._declare()
        log.info(
            "connected to RabbitMQ at %s",
            redacted(str(getattr(self._connection, "current_url", self.url))),
        )

    async def _declare(self) -> None:
        assert self._connection is not None
        assert self._consume_channel is not None and self._publish_channel is not None
        ex = self.names.exchanges
        channel = self._consume_channel
        events_arguments = await declare_unrouted(self._connection, ex)
        await declare_exchanges(channel, ex, events_arguments=events_arguments)
        arguments = queue_arguments(ex, delivery_limit=self.max_deliveries + 2)
        self._events_queue = await channel.declare_queue(
            self.names.events_queue, durable=True, arguments=arguments
        )
        self._replies_queue = await channel.declare_queue(
            self.names.replies_queue, durable=True, arguments=arguments
        )
        await self._replies_queue.bind(ex.replies, routing_key=self.names.reply_to)
        dead = await channel.declare_queue(
            self.names.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead.bind(ex.dead_letter, routing_key="")
        self._commands = await self._publish_channel.get_exchange(ex.commands, ensure=False)

    async def bind_events(self, event_types: Iterable[str], known: Iterable[str] = ()) -> None:
        """Bind the events queue to exactly ``event_types``: bind the new, unbind the rest.

        "The rest" is every type this process bound before, and ``known`` (e.g. the triggers
        of every stored definition version, retired ones included): a binding made by an
        earlier run can only be found through ``known``, as AMQP cannot list bindings.
        Unbinding a type that is not bound is harmless.
        """
        wanted = set(event_types)
        async with self._bind_lock:
            new = sorted(wanted - self._bound)
            stale = sorted((self._bound | set(known)) - wanted)
            if not new and not stale:
                return
            assert self._events_queue is not None
            events = self.names.exchanges.events
            with _broker_errors("bind events"):
                for event_type in new:
                    await self._events_queue.bind(events, routing_key=event_type)
                    self._bound.add(event_type)
                for event_type in stale:
                    await self._events_queue.unbind(events, routing_key=event_type)
                    self._bound.discard(event_type)
            if new:
                log.info("events queue bound to %s", ", ".join(new))
            if stale:
                log.info("events queue unbound from %s", ", ".join(stale))

    async def close(self) -> None:
        if self._connection is not None:
            try:
                await self._connection.close()
            except _DRIVER_ERRORS as exc:  # closing a broken connection
                log.debug("closing the RabbitMQ connection: %r", exc)
            self._connection = None

    # -- publishing ----------------------------------------------------------------------
    async def publish_commands(self, commands: Sequence[Command]) -> None:
        """Publish every command ``mandatory`` and wait for every broker confirm."""
        if not commands:
            return
        assert self._commands is not None, "connect() first"
        exchange = self._commands

        async def publish(command: Command) -> None:
            began = time.monotonic()
            try:
                await exchange.publish(
                    encode_command(command),
                    routing_key=command.routing_key,
                    mandatory=True,
                    timeout=self.publish_timeout,
                )
            except aiormq.exceptions.PublishError:
                self._returned(command)
                return
            self.observer.confirmed(time.monotonic() - began)

        with _broker_errors("publish"):
            await asyncio.gather(*(publish(c) for c in commands))
        self.published += len(commands)

    def _returned(self, command: Command) -> None:
        self.observer.returned()
        reply = returned_reply(command)
        log.warning(
            "command %s returned: no queue is bound for %s",
            command.message_id,
            command.routing_key,
        )
        if reply is not None and self.on_returned is not None:
            self.on_returned(reply)

    # -- consuming -----------------------------------------------------------------------
    async def start_consuming(self, on_event: EventHandler, on_reply: ReplyHandler) -> None:
        assert self._events_queue is not None and self._replies_queue is not None
        assert self._publish_channel is not None
        max_bytes, max_depth = self.max_message_bytes, self.max_json_depth
        dead_letter = await self._publish_channel.get_exchange(
            self.names.exchanges.dead_letter, ensure=False
        )
        default = self._publish_channel.default_exchange

        def consumer(queue: str, label: str, rejected: str) -> Consumer:
            return Consumer(
                queue,
                label,
                dead_letter=dead_letter,
                default_exchange=default,
                transient=self._transient,
                policy=self.policy,
                observer=self.observer,
                logger=log,
                rejected_category=rejected,
            )

        events = consumer(self.names.events_queue, "events", "bad_trigger_key")
        replies = consumer(self.names.replies_queue, "replies", "other")
        self._handlers = [events, replies]

        def callback(
            consumer: Consumer,
            decode: Callable[..., T],
            handle: Callable[[T], Awaitable[str | None]],
        ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
            def decoded(message: AbstractIncomingMessage) -> T:
                raw = RawMessage.from_amqp(message)
                return decode(raw, max_bytes=max_bytes, max_depth=max_depth)

            async def on_message(message: AbstractIncomingMessage) -> None:
                await self._track(consumer.deliver(message, decoded, handle))

            return on_message

        on_events = callback(events, decode_event, on_event)
        on_replies = callback(replies, decode_reply, on_reply)

        with _broker_errors("consume"):
            for queue, on_message in (
                (self._events_queue, on_events),
                (self._replies_queue, on_replies),
            ):
                tag = await queue.consume(on_message)
                self._consumers.append((queue, tag))

    async def _track(self, delivery: Awaitable[None]) -> None:
        self._inflight += 1
        self._idle.clear()
        try:
            await delivery
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def stop_consuming(self, grace: float) -> None:
        """Cancel the consumers, then wait up to ``grace`` seconds for in-flight messages."""
        for handler in self._handlers:
            handler.stopping = True
        for queue, tag in self._consumers:
            try:
                await queue.cancel(tag)
            except _DRIVER_ERRORS as exc:
                log.warning("cancelling consumer %s: %r", tag, exc)
        self._consumers.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.warning("%d messages still in flight after %.1fs", self._inflight, grace)
