"""The RabbitMQ topology of SPEC §3, declared the same way by the coordinator and the SDK.

RabbitMQ refuses a second declaration of an exchange or queue whose properties differ
(``PRECONDITION_FAILED``), so every service declares through these functions.

The events exchange has the alternate exchange ``<prefix>.unrouted`` (fanout) with a
bounded queue of the same name (``x-max-length``, oldest dropped first): an event whose
type nothing is bound to is kept there for inspection. An events exchange declared before
this existed has no such argument, and the argument of an existing exchange cannot be
changed by declaring it again: ``declare_unrouted`` then keeps the exchange as it is and
logs how to add the alternate exchange by a policy (or delete the exchange while nothing
publishes, and let the next start declare it).
"""

from __future__ import annotations

import logging
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from schemas.envelope import Exchanges

__all__ = [
    "DEFAULT_DELIVERY_LIMIT",
    "UNROUTED_MAX_LENGTH",
    "DeclaredExchanges",
    "declare_exchanges",
    "declare_unrouted",
    "queue_arguments",
]

log = logging.getLogger(__name__)

#: How many times a quorum queue delivers a message before dead-lettering it.
DEFAULT_DELIVERY_LIMIT = 5

#: How many unrouted events ``<prefix>.unrouted`` keeps (the oldest go first).
UNROUTED_MAX_LENGTH = 10_000


class DeclaredExchanges:
    """The four declared exchanges, ready to publish to or bind against."""

    def __init__(
        self,
        events: AbstractExchange,
        commands: AbstractExchange,
        replies: AbstractExchange,
        dead_letter: AbstractExchange,
    ) -> None:
        self.events = events
        self.commands = commands
        self.replies = replies
        self.dead_letter = dead_letter


async def declare_unrouted(
    connection: AbstractConnection, exchanges: Exchanges, *, max_length: int = UNROUTED_MAX_LENGTH
) -> dict[str, Any]:
    """Declare ``<prefix>.unrouted`` and the events exchange with it as alternate exchange.

    Runs on a channel of its own, which a ``PRECONDITION_FAILED`` closes.

    Args:
        connection: An open connection.
        exchanges: The exchange names, under their prefix.
        max_length: How many unrouted events the queue keeps.

    Returns:
        The events exchange's arguments, to pass to ``declare_exchanges``: with the
        alternate exchange, or none when the exchange exists without it.
    """
    arguments: dict[str, Any] = {"alternate-exchange": exchanges.unrouted}
    channel = await connection.channel(publisher_confirms=False)
    try:
        unrouted = await channel.declare_exchange(
            exchanges.unrouted, aio_pika.ExchangeType.FANOUT, durable=True
        )
        queue = await channel.declare_queue(
            exchanges.unrouted,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-max-length": max_length,
                "x-overflow": "drop-head",
            },
        )
        await queue.bind(unrouted, routing_key="")
        try:
            await channel.declare_exchange(
                exchanges.events, aio_pika.ExchangeType.TOPIC, durable=True, arguments=arguments
            )
        except aiormq.exceptions.ChannelPreconditionFailed:
            log.warning(
                "exchange %s exists without an alternate exchange: events nothing is bound to "
                "are dropped, not kept in %s. Add it with a policy, e.g. rabbitmqctl "
                "set_policy %s-unrouted '^%s$' '{\"alternate-exchange\":\"%s\"}' "
                "--apply-to exchanges",
                exchanges.events,
                exchanges.unrouted,
                exchanges.prefix,
                exchanges.events.replace(".", "\\."),
                exchanges.unrouted,
            )
            return {}
    finally:
        if not channel.is_closed:
            await channel.close()
    return arguments


async def declare_exchanges(
    channel: AbstractChannel,
    exchanges: Exchanges,
    *,
    events_arguments: dict[str, Any] | None = None,
) -> DeclaredExchanges:
    """Declare the four durable exchanges of SPEC §3 (idempotent).

    Args:
        channel: An open channel.
        exchanges: The exchange names, under their prefix.
        events_arguments: The events exchange's arguments, as ``declare_unrouted`` returned
            them; ``None``: the standard ones (``alternate-exchange`` = ``<prefix>.unrouted``).

    Returns:
        The declared exchanges.
    """
    events = await channel.declare_exchange(
        exchanges.events,
        aio_pika.ExchangeType.TOPIC,
        durable=True,
        arguments=events_arguments
        if events_arguments is not None
        else {"alternate-exchange": exchanges.unrouted},
    )
    commands = await channel.declare_exchange(
        exchanges.commands, aio_pika.ExchangeType.TOPIC, durable=True
    )
    replies = await channel.declare_exchange(
        exchanges.replies, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dead_letter = await channel.declare_exchange(
        exchanges.dead_letter, aio_pika.ExchangeType.FANOUT, durable=True
    )
    return DeclaredExchanges(events, commands, replies, dead_letter)


def queue_arguments(
    exchanges: Exchanges, *, delivery_limit: int = DEFAULT_DELIVERY_LIMIT
) -> dict[str, Any]:
    """The arguments of every durable quorum queue of the topology.

    Args:
        exchanges: The exchange names; messages a queue rejects go to their dead-letter
            exchange.
        delivery_limit: Deliveries of one message before the broker dead-letters it.

    Returns:
        The ``arguments`` to pass to ``declare_queue(..., durable=True)``.
    """
    if delivery_limit < 1:
        raise ValueError(f"delivery_limit must be at least 1, got {delivery_limit}")
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": exchanges.dead_letter,
        "x-delivery-limit": delivery_limit,
    }
