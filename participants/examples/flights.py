"""The ``flights`` example participant: books and cancels flights."""

from __future__ import annotations

from typing import Any

from participants import Delivery, Participant, ParticipantSettings, StepError
from participants.examples._common import Ledger, main, maybe_delay, require

__all__ = ["NAME", "build"]

NAME = "flights"


def build(**settings: Any) -> Participant:
    """A ``flights`` participant; ``settings`` are ``ParticipantSettings`` fields."""
    participant = Participant.from_settings(NAME, ParticipantSettings(**settings))
    bookings = Ledger("fl", "booking_id", "cancelled")

    @participant.action("book_flight")
    async def book_flight(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        await maybe_delay(input)
        require(input, "trip_id", (str, int))
        flight = require(input, "flight", str)
        if flight == "SOLD-OUT":
            raise StepError("no_seats", f"flight {flight} has no seats left")
        return bookings.add(flight)

    participant.compensation("cancel_flight")(bookings.undo)
    return participant


if __name__ == "__main__":
    main(build)
