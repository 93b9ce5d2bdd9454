"""The ``shipping`` example participant: creates shipments (typically the pivot step)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from participants import Delivery, Participant, ParticipantSettings, StepError
from participants.examples._common import delay_from, main, maybe_delay, require

__all__ = ["NAME", "build"]

NAME = "shipping"


def build(**settings: Any) -> Participant:
    """A ``shipping`` participant; ``settings`` are ``ParticipantSettings`` fields."""
    participant = Participant.from_settings(NAME, ParticipantSettings(**settings))

    @participant.action("create_shipment")
    async def create_shipment(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        await maybe_delay(input)
        require(input, "order_id", (str, int))
        address = require(input, "address", str)
        delay = delay_from(address)
        if delay is not None:
            await asyncio.sleep(delay)
        if "UNDELIVERABLE" in address:
            raise StepError("undeliverable", f"no carrier delivers to {address!r}")
        return {"tracking_number": f"TRK-{uuid.uuid4().hex[:10].upper()}"}

    return participant


if __name__ == "__main__":
    main(build)
