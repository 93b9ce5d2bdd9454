"""The ``hotels`` example participant: books and cancels rooms."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from participants import Delivery, Participant, ParticipantSettings, StepError
from participants.examples._common import delay_from, main, maybe_delay, require, undo_target

__all__ = ["NAME", "build"]

NAME = "hotels"


def build(**settings: Any) -> Participant:
    """A ``hotels`` participant; ``settings`` are ``ParticipantSettings`` fields."""
    participant = Participant.from_settings(NAME, ParticipantSettings(**settings))
    bookings: dict[str, str] = {}

    @participant.action("book_room")
    async def book_room(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        await maybe_delay(input)
        require(input, "trip_id", (str, int))
        hotel = require(input, "hotel", str)
        nights = require(input, "nights", int)
        if nights < 1:
            raise StepError("invalid_nights", f"{nights} nights: at least one is needed")
        delay = delay_from(hotel)
        if delay is not None:
            await asyncio.sleep(delay)
        if hotel == "FULL":
            raise StepError("no_rooms", f"hotel {hotel} has no rooms left")
        booking_id = f"ht-{uuid.uuid4().hex[:12]}"
        bookings[booking_id] = hotel
        return {"booking_id": booking_id}

    @participant.compensation("cancel_room")
    async def cancel_room(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        await maybe_delay(input)
        booking_id = undo_target(input, "booking_id", delivery)
        return {"booking_id": booking_id, "cancelled": bookings.pop(booking_id, None) is not None}

    return participant


if __name__ == "__main__":
    main(build)
