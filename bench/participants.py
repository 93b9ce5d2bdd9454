"""The benchmark's participants process: ``python -m bench.participants``.

Three SDK participants (``alpha``, ``beta``, ``gamma``) with trivially fast handlers, all
in this one process. ``beta`` fails non-retryably when the input says ``fail``, which makes
the coordinator compensate ``alpha``. Prints ``ready`` once consuming, and on SIGTERM one
JSON line with the number of replies published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from typing import Any

from pymongo import monitoring

from coordinator.adapters.monitor import RoundTripCounter
from participants import Delivery, Participant, StepError
from participants._delivery import Command

NAMES = ("alpha", "beta", "gamma")

#: The SDK's database work, counted on every client (registered before any is made): its
#: records' collection has the ``_id`` index and the TTL index on ``expires_at``.
DATABASE = RoundTripCounter({"participant_outcomes": [("_id",), ("expires_at",)]})
monitoring.register(DATABASE)


class CountingParticipant(Participant):
    """A participant that counts the replies it publishes."""

    replies = 0

    async def _reply(self, command: Command, body: dict[str, Any]) -> None:
        await super()._reply(command, body)
        CountingParticipant.replies += 1


def build(name: str) -> Participant:
    prefix = os.environ["SAGA_EXCHANGE_PREFIX"]
    participant = CountingParticipant(
        name,
        amqp_url=os.environ["SAGA_AMQP_URL"],
        mongodb_url=os.environ["SAGA_MONGODB_URL"],
        database=os.environ["SAGA_MONGODB_DATABASE"],
        prefix=prefix,
        queue=f"{prefix}.{name}.commands",
        prefetch=int(os.environ.get("BENCH_PREFETCH", "64")),
    )

    @participant.action("act")
    async def act(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        if name == "beta" and input.get("fail"):
            raise StepError("declined", "the benchmark asked this step to fail")
        return {"done": delivery.step}

    @participant.compensation("undo")
    async def undo(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        return {"undone": delivery.step}

    return participant


async def _main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = [build(name) for name in NAMES]
    try:
        for participant in running:
            await participant.start()
        print("ready", flush=True)
        await stop.wait()
    finally:
        for participant in running:
            with contextlib.suppress(Exception):
                await participant.stop()
    database = {
        "round_trips": DATABASE.total,
        "writes": DATABASE.write_statements,
        "write_bytes": DATABASE.write_bytes,
        "index_entries": DATABASE.index_writes,
    }
    print(json.dumps({"replies": CountingParticipant.replies, "db": database}), flush=True)


if __name__ == "__main__":
    asyncio.run(_main())
