"""The echo participants: ``python -m bench.echo``.

``alpha``, ``beta`` and ``gamma`` on raw aio-pika, no SDK and no database: the same
responder as the floor's, on the coordinator's topology. Each consumes the queue the SDK
participants use (``{prefix}.{name}.commands``, bound to the commands exchange with
``{name}.*``, the same arguments) and answers every command as the SDK's ``_reply`` does
(the copied headers, a JSON body, persistent, ``correlation_id`` = the saga id, to the
replies exchange with routing key = ``reply_to``, publisher confirmed), then acks it.
``beta``'s action fails non-retryably when the input says ``fail``, as in
``bench.participants``. Reads ``SAGA_AMQP_URL``, ``SAGA_EXCHANGE_PREFIX`` and
``BENCH_PREFETCH``; prints ``ready`` once consuming, and on SIGTERM one JSON line with the
number of replies published.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

from bench.participants import NAMES
from schemas.envelope import (
    DEFAULT_REPLY_TO,
    HEADER_KIND,
    HEADER_SAGA_ID,
    HEADER_STEP,
    REPLY_COPIED_HEADERS,
    Exchanges,
)
from schemas.topology import declare_exchanges, queue_arguments

_FAILED = {
    "status": "failed",
    "error": {
        "code": "declined",
        "message": "the benchmark asked this step to fail",
        "retryable": False,
    },
}


def _text(value: Any) -> Any:
    return bytes(value).decode(errors="replace") if isinstance(value, bytes | bytearray) else value


def reply_body(name: str, kind: str, step: str, command: dict[str, Any]) -> dict[str, Any]:
    """What the SDK participants of ``bench.participants`` answer."""
    if kind == "compensation":
        return {"status": "succeeded", "output": {"undone": step}}
    if name == "beta" and command.get("fail"):
        return _FAILED
    return {"status": "succeeded", "output": {"done": step}}


class Echo:
    """One connection, one confirming channel, a consumer per participant."""

    def __init__(self, replies: AbstractExchange) -> None:
        self.replies = replies
        self.count = 0

    async def answer(self, name: str, message: AbstractIncomingMessage) -> None:
        headers = {key: _text(value) for key, value in (message.headers or {}).items()}
        body = reply_body(
            name,
            str(headers.get(HEADER_KIND)),
            str(headers.get(HEADER_STEP)),
            json.loads(message.body),
        )
        reply = aio_pika.Message(
            json.dumps(body, separators=(",", ":")).encode(),
            headers={key: headers[key] for key in REPLY_COPIED_HEADERS if key in headers},
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=headers.get(HEADER_SAGA_ID),
            message_id=uuid.uuid4().hex,
            timestamp=datetime.now(UTC),
            app_id=name,
        )
        routing_key = message.reply_to or DEFAULT_REPLY_TO
        await self.replies.publish(reply, routing_key=routing_key, mandatory=False)
        self.count += 1
        await message.ack()


async def _main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    exchanges = Exchanges(os.environ["SAGA_EXCHANGE_PREFIX"])
    connection = await aio_pika.connect_robust(os.environ["SAGA_AMQP_URL"])
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=int(os.environ.get("BENCH_PREFETCH", "64")))
        declared = await declare_exchanges(channel, exchanges)
        echo = Echo(declared.replies)
        for name in NAMES:
            queue = await channel.declare_queue(
                f"{exchanges.prefix}.{name}.commands",
                durable=True,
                arguments=queue_arguments(exchanges),
            )
            await queue.bind(declared.commands, routing_key=f"{name}.*")

            async def on_command(message: AbstractIncomingMessage, name: str = name) -> None:
                await echo.answer(name, message)

            await queue.consume(on_command)
        print("ready", flush=True)
        await stop.wait()
    finally:
        await connection.close()
    print(json.dumps({"replies": echo.count}), flush=True)


if __name__ == "__main__":
    asyncio.run(_main())
