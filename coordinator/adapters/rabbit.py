"""RabbitMQ: the only aio-pika code of the coordinator.

Theory of operation
-------------------
``RabbitBroker`` owns one robust connection and two channels: a consuming channel (QoS =
``prefetch``) and a publishing channel with publisher confirms. It declares the topology of
SPEC §3 (exchanges through ``schemas.topology`` so that the participant SDK declares the
same ones), the coordinator's two quorum queues and the dead-letter queue that keeps every
rejected message.

Every delivery goes through one path (``_deliver``):

1. the codec (``decode_event`` / ``decode_reply``) turns the raw message into a decoded
   event or reply, or raises ``Undecodable`` with the reason;
2. a message that already failed ``max_deliveries`` times is not tried again;
3. the handler runs; it returns ``None`` (done: ack) or a rejection reason;
4. a rejected message is published, body and headers unchanged plus ``x-saga-rejection``,
   to the dead-letter exchange with a confirm, and only then acked: it is kept, and never
   redelivered in a loop. The ``BrokerObserver`` hears of it by a fixed category (the
   metric's label), and of every command's publish-confirm latency.

``AdapterError`` from the handler (MongoDB or RabbitMQ unavailable) is not the message's
fault: the delivery waits and tries again, without counting. Any other exception nacks the
message back to the queue; the quorum queue counts the delivery (``x-delivery-count``) and
the guard of step 2 dead-letters it once the count reaches ``max_deliveries``.

aio-pika errors are re-raised as ``BrokerUnavailable`` here and go no further.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast

import aio_pika
import aiormq
import pamqp.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    DeliveryMode,
)
from pydantic import TypeAdapter, ValidationError

from coordinator.engine.state import Command
from coordinator.errors import AdapterError, BrokerUnavailable
from coordinator.logging import saga_extra
from schemas.envelope import (
    HEADER_ATTEMPT,
    HEADER_IDEMPOTENCY_KEY,
    HEADER_KIND,
    HEADER_REJECTION,
    HEADER_SAGA_ID,
    HEADER_STEP,
    HEADER_TRACEPARENT,
    Exchanges,
    FailedReply,
    Kind,
    Reply,
    SucceededReply,
    idempotency_key,
    is_idempotency_key,
)
from schemas.topology import declare_exchanges, queue_arguments

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
_REPLY = TypeAdapter[SucceededReply | FailedReply](Reply)


@contextmanager
def _broker_errors(what: str) -> Iterator[None]:
    """Re-raise aio-pika / aiormq failures as ``BrokerUnavailable``, chained."""
    try:
        yield
    except AdapterError:
        raise
    except _DRIVER_ERRORS as exc:
        raise BrokerUnavailable(f"RabbitMQ: {what} failed: {exc!r}") from exc


# -- codec ------------------------------------------------------------------------------


class Undecodable(Exception):
    """A message breaks the wire contract; ``reason`` goes into ``x-saga-rejection``.

    ``category`` is a fixed word for the kind of breach (``too_large``, ``not_json``, …):
    the label of the dead-letter metric, where the free-text reason would not do.
    """

    def __init__(self, reason: str, category: str) -> None:
        self.reason = reason
        self.category = category
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """The parts of an AMQP delivery the codec reads: no aio-pika type past this point."""

    body: bytes
    routing_key: str
    headers: Mapping[str, Any]
    message_id: str | None = None
    correlation_id: str | None = None

    @classmethod
    def from_amqp(cls, message: AbstractIncomingMessage) -> RawMessage:
        return cls(
            body=message.body,
            routing_key=message.routing_key or "",
            headers=dict(message.headers or {}),
            message_id=message.message_id,
            correlation_id=message.correlation_id,
        )


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    event_type: str
    body: dict[str, Any]
    message_id: str | None
    traceparent: str | None


@dataclass(frozen=True, slots=True)
class IncomingReply:
    saga_id: str
    step: str
    kind: Kind
    attempt: int
    reply: SucceededReply | FailedReply
    message_id: str | None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _json_object(raw: RawMessage, max_bytes: int) -> dict[str, Any]:
    if len(raw.body) > max_bytes:
        raise Undecodable(
            f"message of {len(raw.body)} bytes is over the limit of {max_bytes} bytes",
            "too_large",
        )
    try:
        body = json.loads(raw.body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Undecodable(f"body is not JSON: {exc}", "not_json") from exc
    if not isinstance(body, dict):
        raise Undecodable(f"body is a JSON {type(body).__name__}, not a JSON object", "not_object")
    return body


def decode_event(raw: RawMessage, *, max_bytes: int) -> IncomingEvent:
    """An event: any JSON object; its type is the routing key."""
    body = _json_object(raw, max_bytes)
    if not raw.routing_key:
        raise Undecodable("event without a routing key (the event type)", "missing_routing_key")
    return IncomingEvent(
        event_type=raw.routing_key,
        body=body,
        message_id=raw.message_id,
        traceparent=_text(raw.headers.get(HEADER_TRACEPARENT)),
    )


def _required(raw: RawMessage, name: str) -> str:
    value = _text(raw.headers.get(name))
    if not value:
        raise Undecodable(f"reply without the {name} header", "missing_header")
    return value


def decode_reply(raw: RawMessage, *, max_bytes: int) -> IncomingReply:
    """A reply: the contract headers of its command, and a succeeded/failed body."""
    body = _json_object(raw, max_bytes)
    saga_id = _required(raw, HEADER_SAGA_ID)
    step = _required(raw, HEADER_STEP)
    kind = _required(raw, HEADER_KIND)
    if kind not in ("action", "compensation"):
        raise Undecodable(
            f"{HEADER_KIND} is {kind!r}; expected action or compensation", "bad_header"
        )
    attempt_value = raw.headers.get(HEADER_ATTEMPT)
    if isinstance(attempt_value, bytes | str) and _text(attempt_value):
        text = _text(attempt_value) or ""
        attempt_value = int(text) if text.isdigit() else text
    if attempt_value is None:
        raise Undecodable(f"reply without the {HEADER_ATTEMPT} header", "missing_header")
    if isinstance(attempt_value, bool) or not isinstance(attempt_value, int) or attempt_value < 1:
        raise Undecodable(
            f"{HEADER_ATTEMPT} is {attempt_value!r}; expected an integer >= 1", "bad_header"
        )
    if raw.correlation_id and raw.correlation_id != saga_id:
        raise Undecodable(
            f"correlation_id {raw.correlation_id!r} differs from {HEADER_SAGA_ID} {saga_id!r}",
            "bad_header",
        )
    key = _text(raw.headers.get(HEADER_IDEMPOTENCY_KEY))
    expected_key = idempotency_key(saga_id, step, cast(Kind, kind))
    if key is not None and not is_idempotency_key(key, saga_id, step, cast(Kind, kind)):
        raise Undecodable(
            f"{HEADER_IDEMPOTENCY_KEY} is {key!r}; the headers name {expected_key!r}", "bad_header"
        )
    status = body.get("status")
    if status not in ("succeeded", "failed"):
        raise Undecodable(
            f"unknown reply status {status!r}; expected succeeded or failed", "unknown_status"
        )
    try:
        reply = _REPLY.validate_python(body)
    except ValidationError as exc:
        problems = "; ".join(
            # The first location is the discriminator (the status): leave it out.
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise Undecodable(f"invalid reply body: {problems}", "bad_body") from exc
    return IncomingReply(
        saga_id=saga_id,
        step=step,
        kind=cast(Kind, kind),
        attempt=attempt_value,
        reply=reply,
        message_id=raw.message_id,
    )


def encode_command(command: Command) -> aio_pika.Message:
    """The AMQP message of SPEC §3 for one outbox command."""
    saga_id = str(command.headers.get(HEADER_SAGA_ID, ""))
    return aio_pika.Message(
        body=json.dumps(command.body, separators=(",", ":"), default=str).encode(),
        message_id=command.message_id,
        correlation_id=saga_id,
        type=command.type,
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
        reply_to=command.reply_to,
        timestamp=command.timestamp,
        headers=dict(command.headers),
    )


# -- broker ----------------------------------------------------------------------------

EventHandler = Callable[[IncomingEvent], Awaitable[str | None]]
ReplyHandler = Callable[[IncomingReply], Awaitable[str | None]]


class BrokerObserver(Protocol):
    """What the broker reports for metrics (``coordinator.metrics.SagaMetrics``)."""

    def dead_lettered(self, queue: str, category: str) -> None:
        """A message of ``queue`` (``events`` or ``replies``) was dead-lettered."""
        ...

    def confirmed(self, seconds: float) -> None:
        """A command was confirmed by the broker ``seconds`` after it was published."""
        ...


class _NoObserver:
    def dead_lettered(self, queue: str, category: str) -> None:
        pass

    def confirmed(self, seconds: float) -> None:
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
    """Connection, topology, publisher (``Publisher`` port) and consumers."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "saga",
        reply_to: str = "coordinator",
        prefetch: int = 64,
        max_message_bytes: int = 1024 * 1024,
        max_deliveries: int = 5,
        retry_delay: float = 1.0,
        publish_timeout: float = 15.0,
        observer: BrokerObserver | None = None,
        connection_name: str | None = None,
    ) -> None:
        self.url = url
        self.connection_name = connection_name or (
            f"saga-coordinator {prefix} {socket.gethostname()}:{os.getpid()}"
        )
        """Sent as the ``connection_name`` client property: how the broker (``rabbitmqctl
        list_connections client_properties``, the management UI) tells this connection apart."""
        self.observer: BrokerObserver = observer if observer is not None else _NoObserver()
        self.names = BrokerNames(prefix, reply_to)
        self.prefetch = prefetch
        self.max_message_bytes = max_message_bytes
        self.max_deliveries = max_deliveries
        self.retry_delay = retry_delay
        self.publish_timeout = publish_timeout
        """Seconds to wait for a broker confirm before giving up (``BrokerUnavailable``)."""
        self.published = 0
        self._connection: AbstractRobustConnection | None = None
        self._consume_channel: AbstractChannel | None = None
        self._publish_channel: AbstractChannel | None = None
        self._commands: AbstractExchange | None = None
        self._dead_letter: AbstractExchange | None = None
        self._events_queue: AbstractQueue | None = None
        self._replies_queue: AbstractQueue | None = None
        self._bound: set[str] = set()
        self._bind_lock = asyncio.Lock()
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._last_error: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------
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
            self._connection = await aio_pika.connect_robust(
                self.url, client_properties={"connection_name": self.connection_name}
            )
            self._consume_channel = await self._connection.channel()
            await self._consume_channel.set_qos(prefetch_count=self.prefetch)
            self._publish_channel = await self._connection.channel(publisher_confirms=True)
            await self._declare()

    async def _declare(self) -> None:
        assert self._consume_channel is not None and self._publish_channel is not None
        ex = self.names.exchanges
        channel = self._consume_channel
        await declare_exchanges(channel, ex)
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
        self._dead_letter = await self._publish_channel.get_exchange(ex.dead_letter, ensure=False)

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

    sync_event_bindings = bind_events

    async def close(self) -> None:
        if self._connection is not None:
            try:
                await self._connection.close()
            except _DRIVER_ERRORS as exc:  # closing a broken connection
                log.debug("closing the RabbitMQ connection: %r", exc)
            self._connection = None

    # -- publishing ----------------------------------------------------------------------
    async def publish_commands(self, commands: Sequence[Command]) -> None:
        """Publish every command and wait for every broker confirm."""
        if not commands:
            return
        assert self._commands is not None, "connect() first"
        exchange = self._commands

        async def publish(command: Command) -> None:
            began = time.monotonic()
            await exchange.publish(encode_command(command), routing_key=command.routing_key)
            self.observer.confirmed(time.monotonic() - began)

        with _broker_errors("publish"):
            await asyncio.gather(*(publish(c) for c in commands))
        self.published += len(commands)

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Keep a rejected message on the dead-letter exchange, with the reason."""
        assert self._dead_letter is not None, "connect() first"
        headers = dict(message.headers or {})
        headers[HEADER_REJECTION] = reason[:1000]
        kept = aio_pika.Message(
            body=message.body,
            headers=headers,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            type=message.type,
            content_type=message.content_type,
            reply_to=message.reply_to,
            timestamp=message.timestamp or datetime.now(UTC),
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        with _broker_errors("dead-letter"):
            await self._dead_letter.publish(
                kept, routing_key=message.routing_key or "", timeout=self.publish_timeout
            )

    # -- consuming -----------------------------------------------------------------------
    async def start_consuming(self, on_event: EventHandler, on_reply: ReplyHandler) -> None:
        assert self._events_queue is not None and self._replies_queue is not None
        max_bytes = self.max_message_bytes
        self._stopping = False

        async def events(message: AbstractIncomingMessage) -> None:
            await self._deliver(
                message,
                lambda raw: decode_event(raw, max_bytes=max_bytes),
                on_event,
                ("events", "bad_trigger_key"),
            )

        async def replies(message: AbstractIncomingMessage) -> None:
            await self._deliver(
                message,
                lambda raw: decode_reply(raw, max_bytes=max_bytes),
                on_reply,
                ("replies", "other"),
            )

        with _broker_errors("consume"):
            for queue, callback in ((self._events_queue, events), (self._replies_queue, replies)):
                tag = await queue.consume(callback)
                self._consumers.append((queue, tag))

    async def stop_consuming(self, grace: float) -> None:
        """Cancel the consumers, then wait up to ``grace`` seconds for in-flight messages."""
        self._stopping = True
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

    async def _deliver(
        self,
        message: AbstractIncomingMessage,
        decode: Callable[[RawMessage], T],
        handler: Callable[[T], Awaitable[str | None]],
        labels: tuple[str, str],
    ) -> None:
        """``labels``: the queue's metric label, and the category of a handler's rejection."""
        self._inflight += 1
        self._idle.clear()
        try:
            await self._process(message, decode, handler, labels)
        except AdapterError as exc:
            # Could not even ack / nack / dead-letter: the broker redelivers it later.
            log.warning("message %s left unacknowledged: %s", message.message_id, exc)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _process(
        self,
        message: AbstractIncomingMessage,
        decode: Callable[[RawMessage], T],
        handler: Callable[[T], Awaitable[str | None]],
        labels: tuple[str, str],
    ) -> None:
        queue, rejected_category = labels
        try:
            decoded = decode(RawMessage.from_amqp(message))
        except Undecodable as rejected:
            await self._reject(message, rejected.reason, (queue, rejected.category))
            return
        tracking = message.message_id or f"tag:{message.delivery_tag}"
        count = _delivery_count(message)
        if count >= self.max_deliveries:
            last = self._last_error.pop(tracking, "unknown (another process)")
            await self._reject(
                message,
                f"failed {count} deliveries; last error: {last}"[:1000],
                (queue, "delivery_limit"),
            )
            return
        while True:
            try:
                reason = await handler(decoded)
                break
            except AdapterError as exc:
                if self._stopping:
                    await self._settle(message.nack(requeue=True))
                    return
                log.warning("%s; retrying message %s", exc, message.message_id)
                await asyncio.sleep(self.retry_delay)
            except Exception as exc:
                self._last_error[tracking] = repr(exc)[:500]
                if len(self._last_error) > 10_000:
                    self._last_error.clear()
                log.exception(
                    "handling message %s failed (delivery %d of %d)",
                    message.message_id,
                    count + 1,
                    self.max_deliveries,
                    extra=saga_extra(message.correlation_id),
                )
                await self._settle(message.nack(requeue=True))
                return
        self._last_error.pop(tracking, None)
        if reason is not None:
            await self._reject(message, reason, (queue, rejected_category))
        else:
            await self._settle(message.ack())

    async def _reject(
        self, message: AbstractIncomingMessage, reason: str, labels: tuple[str, str]
    ) -> None:
        log.warning(
            "dead-lettering message %s from %s: %s",
            message.message_id,
            message.routing_key,
            reason,
            extra=saga_extra(message.correlation_id),
        )
        try:
            await self.dead_letter(message, reason)
        except BrokerUnavailable:
            await self._settle(message.nack(requeue=True))
            raise
        self.observer.dead_lettered(*labels)
        await self._settle(message.ack())

    @staticmethod
    async def _settle(action: Awaitable[None]) -> None:
        with _broker_errors("ack"):
            await action


def _delivery_count(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get("x-delivery-count")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return 0
