"""The ``flights`` example participant: books and cancels flights."""

from __future__ import annotations

import uuid
from typing import Any

from participants import Delivery, Participant, ParticipantSettings, StepError
from participants.examples._common import main, maybe_delay, require, undo_target

__all__ = ["NAME", "build"]

NAME = "flights"


def build(**settings: Any) -> Participant:
    """A ``flights`` participant; ``settings`` are ``ParticipantSettings`` fields."""
    participant = Participant.from_settings(NAME, ParticipantSettings(**settings))
    bookings: dict[str, str] = {}

    @participant.action("book_flight")
    async def book_flight(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        await maybe_delay(input)
        require(input, "trip_id", (str, int))
        flight = require(input, "flight", str)
        if flight == "SOLD-OUT":
            raise StepError("no_seats", f"flight {flight} has no seats left")
        booking_id = f"fl-{uuid.uuid4().hex[:12]}"
        bookings[booking_id] = flight
        return {"booking_id": booking_id}

    @participant.compensation("cancel_flight")
    async def cancel_flight(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        await maybe_delay(input)
        booking_id = undo_target(input, "booking_id", delivery)
        return {"booking_id": booking_id, "cancelled": bookings.pop(booking_id, None) is not None}

    return participant


if __name__ == "__main__":
    main(build)
