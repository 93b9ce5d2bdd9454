"""The ``hotels`` example participant: books and cancels rooms."""

from __future__ import annotations

import asyncio
from typing import Any

from participants import Delivery, Participant, ParticipantSettings, StepError
from participants.examples._common import Ledger, delay_from, main, maybe_delay, require

__all__ = ["NAME", "build"]

NAME = "hotels"


def build(**settings: Any) -> Participant:
    """A ``hotels`` participant; ``settings`` are ``ParticipantSettings`` fields."""
    participant = Participant.from_settings(NAME, ParticipantSettings(**settings))
    bookings = Ledger("ht", "booking_id", "cancelled")

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
        return bookings.add(hotel)

    participant.compensation("cancel_room")(bookings.undo)
    return participant


if __name__ == "__main__":
    main(build)
