"""The floor: what RabbitMQ and the database cost at the least, for the same saga shape.

``python -m bench.floor responder``: consumes ``{prefix}.floor.commands`` and answers every
command at once on ``{prefix}.floor.replies`` (publisher confirm, then ack). Prints
``ready`` once consuming.

``python -m bench.floor loop``: runs ``--sagas`` sagas of ``--steps`` steps, ``--concurrency``
at a time. Each step publishes one persistent command (with a publisher confirm), waits for
its reply, does ONE ``update_one`` on the saga's document and acks the reply. Prints one
JSON line: counts, elapsed time, latencies and its own CPU and peak RSS over the run.

Both use durable quorum queues and persistent messages, as the coordinator does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import time
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from pymongo import AsyncMongoClient

__all__ = ["main"]


def _names(prefix: str) -> tuple[str, str, str]:
    return f"{prefix}.floor", f"{prefix}.floor.commands", f"{prefix}.floor.replies"


async def declare(channel: aio_pika.abc.AbstractChannel, prefix: str) -> Any:
    exchange_name, commands, replies = _names(prefix)
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.DIRECT, durable=True
    )
    queues = []
    for name, key in ((commands, "command"), (replies, "reply")):
        queue = await channel.declare_queue(
            name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, routing_key=key)
        queues.append(queue)
    return exchange, queues[0], queues[1]


async def responder(amqp_url: str, prefix: str, prefetch: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=prefetch)
        exchange, commands, _ = await declare(channel, prefix)

        async def on_command(message: AbstractIncomingMessage) -> None:
            reply = aio_pika.Message(
                b'{"status":"succeeded","output":{}}',
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                correlation_id=message.correlation_id,
                message_id=uuid.uuid4().hex,
                headers=dict(message.headers or {}),
            )
            await exchange.publish(reply, routing_key="reply")
            await message.ack()

        await commands.consume(on_command)
        print("ready", flush=True)
        await stop.wait()
    finally:
        await connection.close()


async def saga_loop(
    amqp_url: str,
    mongodb_url: str,
    database: str,
    prefix: str,
    *,
    sagas: int,
    concurrency: int,
    steps: int,
    prefetch: int,
) -> dict[str, Any]:
    connection = await aio_pika.connect_robust(amqp_url)
    # Journaled writes, as the coordinator's: the same durability per step.
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url, journal=True)
    try:
        publish_channel = await connection.channel(publisher_confirms=True)
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=prefetch)
        exchange, _, _ = await declare(publish_channel, prefix)
        replies = await consume_channel.get_queue(_names(prefix)[2], ensure=False)
        collection = mongo[database]["floor"]
        await collection.find_one({"_id": "warm-up"})
        loop = asyncio.get_running_loop()
        waiting: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}

        async def on_reply(message: AbstractIncomingMessage) -> None:
            future = waiting.pop(message.correlation_id or "", None)
            if future is None:
                await message.ack()
            else:
                future.set_result(message)

        await replies.consume(on_reply)
        latencies: list[float] = []
        started = 0

        async def one_saga(saga_id: str) -> None:
            began = time.monotonic()
            for step in range(steps):
                correlation = f"{saga_id}:{step}"
                future: asyncio.Future[AbstractIncomingMessage] = loop.create_future()
                waiting[correlation] = future
                command = aio_pika.Message(
                    json.dumps({"saga": saga_id, "step": step}).encode(),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    correlation_id=correlation,
                    message_id=uuid.uuid4().hex,
                    type="act",
                    reply_to="reply",
                    headers={"x-saga-id": saga_id, "x-saga-step": str(step)},
                )
                await exchange.publish(command, routing_key="command")
                reply = await future
                await collection.update_one(
                    {"_id": saga_id},
                    {"$set": {"step": step, "reply": reply.message_id}, "$inc": {"revision": 1}},
                    upsert=True,
                )
                await reply.ack()
            latencies.append(time.monotonic() - began)

        async def worker() -> None:
            nonlocal started
            while started < sagas:
                started += 1
                await one_saga(uuid.uuid4().hex)

        cpu_before = time.process_time()
        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
        cpu = time.process_time() - cpu_before
        return {
            "sagas": len(latencies),
            "steps": len(latencies) * steps,
            "elapsed_s": elapsed,
            "latencies_s": sorted(latencies),
            "cpu_s": cpu,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    finally:
        await connection.close()
        await mongo.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("role", choices=["responder", "loop"])
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--mongodb-url", default="")
    parser.add_argument("--database", default="")
    parser.add_argument("--sagas", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=64)
    args = parser.parse_args()
    if args.role == "responder":
        asyncio.run(responder(args.amqp_url, args.prefix, args.prefetch))
        return
    result = asyncio.run(
        saga_loop(
            args.amqp_url,
            args.mongodb_url,
            args.database,
            args.prefix,
            sagas=args.sagas,
            concurrency=args.concurrency,
            steps=args.steps,
            prefetch=args.prefetch,
        )
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
