"""How a consumer settles a message: the one error taxonomy of the coordinator and the SDK.

Every delivery ends in exactly one of three ways, decided by what happened:

* **the input is bad** — the codec raises ``BadMessage``, or the handler raises it or
  returns a reason: a copy goes to the dead-letter exchange with ``x-saga-rejection``
  (publisher-confirmed), then the original is acked. Never redelivered.
* **a dependency is unavailable** — the handler raises an exception that ``transient``
  recognises (MongoDB or RabbitMQ down, contention): the message is *held* and the handler
  run again after a pause that doubles up to ``max_delay`` (with jitter: no hot loop, and
  replicas do not retry in step). It resumes by itself once the dependency answers. On
  shutdown a held message is given back to the queue (``nack``), which is not its fault
  and is not counted.
* **anything else** (a bug) — logged with its traceback, reported to the observer, and
  tried again at most ``max_tries`` times in all; then dead-lettered with the error text.

Counting tries without the broker's delivery count. Quorum queues count deliveries, but
not the same way across versions: since RabbitMQ 4.3 ``basic.nack(requeue=True)`` no
longer raises the count (only ``basic.reject`` does), so a guard on ``x-delivery-count``
never fires there. The count travels with the message instead: a failed message is
*republished* to its own queue (through the default exchange, on a confirm channel) with
``x-saga-tries`` raised by one and its original routing key in ``x-saga-routing-key``, and
only once the broker confirmed the copy is the original acked. At-least-once holds: a
crash between the confirm and the ack leaves two copies, which every handler tolerates
(replies are matched by attempt, triggers by business key, commands by idempotency key).
The price is order: the copy goes to the tail of the queue. Nothing relies on the order
of a queue (the consumers handle up to ``prefetch`` messages at once anyway), and a copy
is made only after a bug, which is rare. The count survives restarts and moves between
replicas with the message, on any RabbitMQ version. The queues' own ``x-delivery-limit``
stays as a backstop for what never reaches this code (a consumer that crashes on every
delivery of a message).

No path leaves a message unacknowledged while its channel is open: when the dead-letter
or retry publish fails, the message is given back (``nack``) after a pause; when even that
fails the channel is gone, and the broker redelivers every unacknowledged message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

from schemas.codec import BadMessage, header_text
from schemas.envelope import HEADER_REJECTION, HEADER_ROUTING_KEY, HEADER_TRIES

__all__ = [
    "Consumer",
    "ConsumerObserver",
    "RetryPolicy",
    "original_routing_key",
    "publishable",
    "tries_of",
]

T = TypeVar("T")

#: A handler: the decoded message in; ``None`` when done, else why it is rejected.
Handle = Callable[[T], Awaitable[str | None]]

_MAX_REASON = 1000
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The bounds of the taxonomy.

    Attributes:
        max_tries: Runs of the handler that may fail unexpectedly (a bug) before the message
            is dead-lettered.
        delay: The first pause: before a bug's next try, and while a dependency is down.
        max_delay: The longest pause while a dependency is down.
        publish_timeout: Seconds to wait for the broker's confirm of a dead-lettered or
            republished copy.
    """

    max_tries: int = 5
    delay: float = 1.0
    max_delay: float = 30.0
    publish_timeout: float = 15.0


class ConsumerObserver(Protocol):
    """What the consumer reports (the coordinator's metrics; nothing in the SDK)."""

    def dead_lettered(self, queue: str, category: str) -> None: ...

    def handler_failed(self, queue: str) -> None: ...


class _Quiet:
    def dead_lettered(self, queue: str, category: str) -> None:
        pass

    def handler_failed(self, queue: str) -> None:
        pass


def tries_of(headers: Mapping[str, Any] | None) -> int:
    """How many times handlers already failed on this message (``x-saga-tries``)."""
    value = (headers or {}).get(HEADER_TRIES)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1_000_000:
        return value
    return 0


def original_routing_key(message: AbstractIncomingMessage) -> str:
    """The routing key the message was first published with (a retried copy keeps it)."""
    if not message.exchange:  # a copy republished to its queue by ``Consumer``
        kept = header_text((message.headers or {}).get(HEADER_ROUTING_KEY))
        if kept is not None:
            return kept
    return message.routing_key or ""


def publishable(value: Any) -> Any:
    """``value`` as the AMQP encoder takes it back.

    Some headers decode to values the encoder refuses: a long string that is not UTF-8
    arrives as ``bytes`` (sent back as ``bytearray``), a double beyond a single float's range
    as a ``float`` the encoder packs in 32 bits (sent back as its text). Without this, the
    copy of such a message could be neither dead-lettered nor retried.
    """
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, float) and math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        return repr(value)
    if isinstance(value, dict):
        return {str(k): publishable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [publishable(v) for v in value]
    return value


def copy_of(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """The message, body and properties unchanged, with ``headers``."""
    return aio_pika.Message(
        body=message.body,
        headers=publishable(headers),
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        type=message.type,
        content_type=message.content_type,
        reply_to=message.reply_to,
        app_id=message.app_id,
        timestamp=message.timestamp or datetime.now(UTC),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


class Consumer:
    """Runs one queue's deliveries through decode and handle, and settles each.

    Args:
        queue: The queue's name (retried copies go back to it).
        label: The queue's short name for logs and metrics (``events``, ``replies``, …).
        dead_letter: The dead-letter exchange, on a channel with publisher confirms.
        default_exchange: The default exchange of that channel (retried copies).
        transient: Whether an exception means a dependency is unavailable.
        policy: The bounds.
        observer: Told of dead letters and handler failures.
        logger: Where to log.
        rejected_category: The metric category of a reason the handler returns.
    """

    def __init__(
        self,
        queue: str,
        label: str,
        *,
        dead_letter: AbstractExchange,
        default_exchange: AbstractExchange,
        transient: Callable[[BaseException], bool],
        policy: RetryPolicy = RetryPolicy(),
        observer: ConsumerObserver | None = None,
        logger: logging.Logger | None = None,
        rejected_category: str = "rejected",
    ) -> None:
        self.queue = queue
        self.rejected_category = rejected_category
        self.label = label
        self.policy = policy
        self.stopping = False
        self._dead_letter = dead_letter
        self._default = default_exchange
        self._transient = transient
        self._observer: ConsumerObserver = observer or _Quiet()
        self._log = logger or logging.getLogger(__name__)

    async def deliver(
        self,
        message: AbstractIncomingMessage,
        decode: Callable[[AbstractIncomingMessage], T],
        handle: Handle[T],
    ) -> None:
        """Decode, handle and settle ``message``; never raises."""
        try:
            try:
                decoded = decode(message)
            except BadMessage as bad:
                await self.dead_letter(message, bad.reason, bad.category)
                return
            except Exception as exc:  # a bug in decoding: bounded tries, like any other
                await self._failed(message, exc)
                return
            await self._handle(message, decoded, handle)
        except Exception:
            # Settling failed, most likely because the channel is gone (then the broker
            # redelivers the message). Should the channel still be open, give the message
            # back; aio-pika refuses, without a word to the broker, to settle it twice.
            self._log.warning(
                "%s: could not settle message %s", self.label, message.message_id, exc_info=True
            )
            await asyncio.sleep(self.policy.delay)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)

    async def _handle(
        self, message: AbstractIncomingMessage, decoded: T, handle: Handle[T]
    ) -> None:
        pause = self.policy.delay
        while True:
            try:
                reason = await handle(decoded)
            except BadMessage as bad:
                await self.dead_letter(message, bad.reason, bad.category)
                return
            except Exception as exc:
                if not self._transient(exc):
                    await self._failed(message, exc)
                    return
                if self.stopping:
                    await message.nack(requeue=True)
                    return
                self._log.warning(
                    "%s: %s; holding message %s, next try in %.1fs",
                    self.label,
                    exc,
                    message.message_id,
                    pause,
                )
                await asyncio.sleep(pause * (0.5 + random.random() / 2))
                pause = min(pause * 2, self.policy.max_delay)
                continue
            if reason is not None:
                await self.dead_letter(message, reason, self.rejected_category)
            else:
                await message.ack()
            return

    async def _failed(self, message: AbstractIncomingMessage, exc: Exception) -> None:
        tries = tries_of(message.headers) + 1
        self._observer.handler_failed(self.label)
        self._log.error(
            "%s: handling message %s failed (try %d of %d)",
            self.label,
            message.message_id,
            tries,
            self.policy.max_tries,
            exc_info=exc,
        )
        if tries >= self.policy.max_tries:
            reason = f"failed {tries} tries; last error: {exc!r}"
            await self.dead_letter(message, reason, "delivery_limit")
            return
        await asyncio.sleep(self.policy.delay)
        headers = dict(message.headers or {})
        headers[HEADER_TRIES] = tries
        headers[HEADER_ROUTING_KEY] = original_routing_key(message)
        try:
            await self._default.publish(
                copy_of(message, headers),
                routing_key=self.queue,
                timeout=self.policy.publish_timeout,
            )
        except Exception as error:
            self._log.warning("%s: could not put message back: %r", self.label, error)
            await message.nack(requeue=True)
            return
        await message.ack()

    async def dead_letter(
        self, message: AbstractIncomingMessage, reason: str, category: str
    ) -> None:
        """Keep a copy on the dead-letter exchange with ``reason``, then ack the original."""
        self._log.warning(
            "%s: dead-lettering message %s (%s): %s",
            self.label,
            message.message_id,
            original_routing_key(message),
            reason,
        )
        headers = dict(message.headers or {})
        headers[HEADER_REJECTION] = reason[:_MAX_REASON]
        try:
            await self._dead_letter.publish(
                copy_of(message, headers),
                routing_key=original_routing_key(message),
                timeout=self.policy.publish_timeout,
            )
        except Exception as error:
            self._log.warning("%s: could not dead-letter: %r; given back", self.label, error)
            await asyncio.sleep(self.policy.delay)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        self._observer.dead_lettered(self.label, category)
        await message.ack()
