"""The RabbitMQ topology of SPEC §3, declared the same way by the coordinator and the SDK.

RabbitMQ refuses a second declaration of an exchange or queue whose properties differ
(``PRECONDITION_FAILED``), so every service declares through these two functions.
"""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from schemas.envelope import Exchanges

__all__ = ["DEFAULT_DELIVERY_LIMIT", "DeclaredExchanges", "declare_exchanges", "queue_arguments"]

#: How many times a quorum queue delivers a message before dead-lettering it.
DEFAULT_DELIVERY_LIMIT = 5


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


async def declare_exchanges(channel: AbstractChannel, exchanges: Exchanges) -> DeclaredExchanges:
    """Declare the four durable exchanges of SPEC §3 (idempotent).

    Args:
        channel: An open channel.
        exchanges: The exchange names, under their prefix.

    Returns:
        The declared exchanges.
    """
    events = await channel.declare_exchange(
        exchanges.events, aio_pika.ExchangeType.TOPIC, durable=True
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
