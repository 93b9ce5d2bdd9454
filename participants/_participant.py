"""``Participant``: the AMQP side of the SDK — topology, consuming, replying, dead-lettering.

Acknowledgement policy, per command — the taxonomy of ``schemas.consuming``, shared with
the coordinator:

* contract broken (``schemas.codec``: body not a JSON object, too large or too deep, a
  required header missing or unparsable) → a copy goes to the dead-letter exchange with
  ``x-saga-rejection`` stating why (publisher confirmed), then the command is acked: it is
  never redelivered in a loop;
* otherwise the outcome is computed (``_execution``), stored when final, the reply is
  published and confirmed, and only then the command is acked;
* MongoDB or RabbitMQ unavailable on the way → the command is held and tried again with
  backoff (1 s doubling to 30 s) until they answer. A reply the broker does not take (a
  nack or a timeout of its confirm, the channel or connection closed: a failover, say) is
  such a case: the handler has run and its outcome is stored, so the held command only
  publishes the same reply again, however long it takes; it is never dead-lettered;
* any other error (a bug in the SDK's path, not in a handler: a handler's exceptions become
  failed replies) → logged with its traceback, tried ``delivery_limit`` times in all
  (counted by the SDK in ``x-saga-tries``, whatever the broker version), then dead-lettered.

``SAGA_AMQP_URL`` may list several brokers, comma-separated (``schemas.brokers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure

from participants._delivery import MAX_BODY_BYTES, MAX_DEPTH, Command, decode_command
from participants._execution import ContextLogger, Executor, Handler
from participants._output import encode_reply
from participants._store import DEFAULT_RECORD_RETENTION, OutcomeStore, checked_retention
from participants.settings import ParticipantSettings
from schemas.brokers import connect, redacted, split_urls
from schemas.codec import Limits
from schemas.consuming import Consumer, RetryPolicy, original_routing_key
from schemas.envelope import REPLY_COPIED_HEADERS, Exchanges
from schemas.topology import (
    DeclaredExchanges,
    declare_exchanges,
    declare_unrouted,
    queue_arguments,
)

__all__ = ["Participant"]

logger = logging.getLogger("participants")


class ReplyNotTaken(Exception):
    """The broker did not take a reply: it nacked it, the confirm timed out, the channel or
    the connection closed. RabbitMQ is unavailable: the command is held and the reply
    published again (the outcome is stored: the handler does not run again)."""


#: What publishing a reply raises when the broker does not take it (encoding errors, bugs,
#: are not among them).
_NOT_TAKEN = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    TimeoutError,
)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means MongoDB or RabbitMQ is unavailable (hold and retry).

    ``WriteError``, ``DocumentTooLarge`` or ``InvalidDocument`` are not outages: retrying
    cannot help them, so they count as bugs (bounded tries, then dead-lettered).
    """
    return isinstance(
        exc,
        ReplyNotTaken
        | ConnectionFailure
        | aio_pika.exceptions.AMQPConnectionError
        | aiormq.exceptions.ConnectionClosed
        | aiormq.exceptions.ChannelInvalidStateError
        | ConnectionError
        | TimeoutError,
    )


class Participant:
    """A service that handles saga commands and replies to the coordinator.

    Args:
        name: The participant's name; commands are routed to it as ``<name>.<command>``.
        amqp_url: The RabbitMQ URL, or several comma-separated (the nodes of a cluster):
            the first that answers is used, the next on every reconnection.
        mongodb_url: The MongoDB URL of the idempotency records.
        database: The MongoDB database holding them.
        prefix: The exchange name prefix (SPEC §3).
        queue: The command queue's name; default ``<name>.commands``.
        prefetch: How many commands are handled concurrently.
        delivery_limit: Tries of a command whose handling fails unexpectedly before it is
            dead-lettered (counted by the SDK); also the queue's delivery limit, a backstop.
        lease: Seconds a claim on an idempotency key holds without renewal (it is renewed
            every third of it while its command is handled); a crashed claimant's key is
            taken over by another process once the lease and half as long again have
            passed on the database's clock.
        max_body_bytes: The command body size limit.
        max_depth: The command body nesting limit.
        collection: The collection of the idempotency records.
        record_retention: How long an idempotency record is kept once final (succeeded,
            failed, or a tombstone); MongoDB's TTL monitor deletes it afterwards, and a
            duplicate of its command arriving later runs the handler again. ``None``
            keeps records forever. Claims in progress never expire this way (their lease
            handles them). ``participants/_store.py`` says why 7 days is enough, and
            when it is not (a failed saga retried by an operator later than that).
        stop_timeout: Seconds ``stop()`` waits for commands in flight before cancelling them.

    Example::

        inventory = Participant("inventory", amqp_url=..., mongodb_url=..., database="shop")

        @inventory.action("reserve_stock")
        async def reserve(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
            return {"reservation_id": f"r-{delivery.saga_id}"}

        await inventory.run()
    """

    def __init__(
        self,
        name: str,
        *,
        amqp_url: str,
        mongodb_url: str,
        database: str,
        prefix: str = "saga",
        queue: str | None = None,
        prefetch: int = 32,
        delivery_limit: int = 5,
        lease: float = 30.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_depth: int = MAX_DEPTH,
        collection: str = "participant_outcomes",
        record_retention: timedelta | None = DEFAULT_RECORD_RETENTION,
        stop_timeout: float = 10.0,
    ) -> None:
        if not name or "." in name or "#" in name or "*" in name:
            raise ValueError(f"participant name {name!r} must be non-empty, without '.', '*', '#'")
        self.name = name
        self.exchanges = Exchanges(prefix)
        self.queue_name = queue or f"{name}.commands"
        self.prefetch = prefetch
        self.delivery_limit = delivery_limit
        self.max_body_bytes = max_body_bytes
        self.max_depth = max_depth
        self.stop_timeout = stop_timeout
        self.policy = RetryPolicy(max_tries=delivery_limit)
        self._amqp_urls = split_urls(amqp_url)
        self._mongodb_url = mongodb_url
        self._database = database
        self._collection = collection
        self._lease = timedelta(seconds=lease)
        self.record_retention = checked_retention(record_retention)
        self._executor = Executor(name, limits=Limits(max_body_bytes, max_depth))
        self._mongo: AsyncMongoClient[dict[str, Any]] | None = None
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._declared: DeclaredExchanges | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._consumer: Consumer | None = None
        self._inflight: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_settings(cls, name: str, settings: ParticipantSettings | None = None) -> Participant:
        """A participant configured from ``settings`` (default: the ``SAGA_*`` environment)."""
        s = settings or ParticipantSettings()
        return cls(
            name,
            amqp_url=s.amqp_url,
            mongodb_url=s.mongodb_url,
            database=s.mongodb_database,
            prefix=s.exchange_prefix,
            queue=s.queue,
            prefetch=s.prefetch,
            delivery_limit=s.delivery_limit,
            lease=s.lease_seconds,
            max_body_bytes=s.max_body_bytes,
            max_depth=s.max_json_depth,
            record_retention=s.record_retention,
        )

    @property
    def executions(self) -> Counter[str]:
        """How many times a handler ran, per idempotency key (in this process)."""
        return self._executor.executions

    def action(self, command: str) -> Callable[[Handler], Handler]:
        """Register the handler of an action command.

        Args:
            command: The command name (the message ``type``, e.g. ``reserve_stock``).

        Returns:
            A decorator that registers the handler and returns it unchanged.
        """
        return self._register("action", command)

    def compensation(self, command: str) -> Callable[[Handler], Handler]:
        """Register the handler of a compensation command.

        It is called only when the step's action succeeded here; otherwise the SDK answers
        ``succeeded`` itself (nothing to undo).

        Args:
            command: The command name (e.g. ``release_stock``).

        Returns:
            A decorator that registers the handler and returns it unchanged.
        """
        return self._register("compensation", command)

    def _register(self, kind: str, command: str) -> Callable[[Handler], Handler]:
        if not command:
            raise ValueError("a command name must not be empty")

        def decorator(handler: Handler) -> Handler:
            registry = self._executor.handlers[kind]
            if command in registry:
                raise ValueError(f"{self.name}: {kind} {command!r} is registered twice")
            registry[command] = handler
            return handler

        return decorator

    async def start(self) -> None:
        """Create the records' TTL index, declare the topology and start consuming."""
        if self._mongo is not None:
            raise RuntimeError(f"participant {self.name} is already started")
        self._mongo = AsyncMongoClient(self._mongodb_url, tz_aware=True)
        store = OutcomeStore(
            self._mongo,
            self._database,
            self.name,
            collection=self._collection,
            lease=self._lease,
            retention=self.record_retention,
        )
        self._executor.store = store
        try:
            await store.ensure_indexes()
            self._connection = await connect(
                self._amqp_urls, client_properties={"connection_name": f"participant {self.name}"}
            )
            self._channel = await self._connection.channel(publisher_confirms=True)
            await self._channel.set_qos(prefetch_count=self.prefetch)
            events_arguments = await declare_unrouted(self._connection, self.exchanges)
            self._declared = await declare_exchanges(
                self._channel, self.exchanges, events_arguments=events_arguments
            )
            self._queue = await self._channel.declare_queue(
                self.queue_name,
                durable=True,
                arguments=queue_arguments(self.exchanges, delivery_limit=self.delivery_limit),
            )
            await self._queue.bind(self._declared.commands, routing_key=f"{self.name}.*")
            self._consumer = Consumer(
                self.queue_name,
                self.name,
                dead_letter=self._declared.dead_letter,
                default_exchange=self._channel.default_exchange,
                transient=unavailable,
                policy=self.policy,
                logger=logger,
            )
            self._consumer_tag = await self._queue.consume(self._on_message)
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "[%s] consuming %s (bound to %s with %s.*), prefetch %d, broker %s",
            self.name,
            self.queue_name,
            self.exchanges.commands,
            self.name,
            self.prefetch,
            redacted(str(getattr(self._connection, "current_url", self._amqp_urls[0]))),
        )

    async def stop(self) -> None:
        """Stop consuming, let commands in flight finish (up to ``stop_timeout``), close."""
        if self._consumer is not None:
            self._consumer.stopping = True
            logger.info(
                "[%s] stopping: %d commands in flight on %s",
                self.name,
                len(self._inflight),
                self.queue_name,
            )
        if self._queue is not None and self._consumer_tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._consumer_tag)
        self._consumer_tag = None
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=self.stop_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = self._channel = self._declared = self._queue = None
        self._consumer = None
        if self._mongo is not None:
            await self._mongo.close()
        self._mongo = None
        self._executor.store = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def run(self) -> None:
        """Run until cancelled, SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stopping.set)
                installed.append(sig)
        try:
            async with self:
                await stopping.wait()
                logger.info("[%s] stopping", self.name)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aiormq runs this callback in a task of the channel and cancels it when the
        # connection is lost. The handler must not be cut off midway (its claim released,
        # the redelivery would run it again): it runs in a task of its own, which only
        # ``stop()`` cancels. A lost connection just loses the ack; the redelivered copy
        # waits for the stored outcome and replies it.
        task = asyncio.create_task(self._process(message))
        self._inflight.add(task)
        task.add_done_callback(self._processed)
        await asyncio.shield(task)

    def _processed(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("[%s] a command failed", self.name, exc_info=task.exception())

    async def _process(self, message: AbstractIncomingMessage) -> None:
        assert self._consumer is not None
        unsent: list[dict[str, Any]] = []  # a reply the broker has not taken yet

        async def answer(command: Command) -> None:
            # Held and tried again while the broker does not take the reply: the outcome
            # computed (and stored, when final) the first time is the one published.
            if not unsent:
                log = ContextLogger(logger, self.name, command.delivery)
                body = await self._executor.outcome(command, log)
                if body is None:
                    return
                unsent.append(body)
            await self._reply(command, unsent[0])

        await self._consumer.deliver(message, self._decode, answer)

    def _decode(self, message: AbstractIncomingMessage) -> Command:
        return decode_command(
            body=message.body,
            headers=message.headers,
            message_type=message.type,
            routing_key=original_routing_key(message),
            reply_to=message.reply_to,
            message_id=message.message_id,
            max_body_bytes=self.max_body_bytes,
            max_depth=self.max_depth,
        )

    async def _reply(self, command: Command, body: dict[str, Any]) -> None:
        assert self._declared is not None
        d = command.delivery
        headers = {name: d.headers[name] for name in REPLY_COPIED_HEADERS if name in d.headers}
        reply = aio_pika.Message(
            encode_reply(body),
            headers=headers,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=d.saga_id,
            message_id=uuid.uuid4().hex,
            timestamp=datetime.now(UTC),
            app_id=self.name,
        )
        try:
            await self._declared.replies.publish(
                reply,
                routing_key=command.reply_to,
                mandatory=False,
                timeout=self.policy.publish_timeout,
            )
        except _NOT_TAKEN as exc:
            raise ReplyNotTaken(f"the broker did not take the reply: {exc!r}") from exc
