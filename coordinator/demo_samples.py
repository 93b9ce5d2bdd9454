"""The demo's sample sagas: the events that start them, the ``payment.authorized`` events a
payment provider would publish for the trips, and the status each saga should end in."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from participants.examples.payments import CARD_DECLINED, CARD_FLAKY

__all__ = ["PAYMENT_AUTHORIZED", "Authorize", "Sample", "samples"]

CARD_OK = "4242-4242-4242-4242"
ORDER_ITEMS = [{"sku": "BOOK-42", "qty": 1}, {"sku": "MUG-7", "qty": 2}]

#: The event ``trip-booking`` waits for; in the demo, the demo plays the payment provider.
PAYMENT_AUTHORIZED = "payment.authorized"


class Authorize(Enum):
    """When the demo publishes a trip's ``payment.authorized``."""

    BEFORE = "before"
    """Before the trip is requested: the coordinator keeps it until the step waits."""
    WITH = "with"
    """Right after the trip's trigger event."""
    WHEN_WAITING = "when waiting"
    """Once the saga's await step waits for it."""


@dataclass(frozen=True)
class Sample:
    """One sample saga: the event that starts it and the status it should end in."""

    title: str
    event_type: str
    body: dict[str, Any]
    expect: str
    authorize: Authorize | None = None

    @property
    def definition(self) -> str:
        return "order-fulfillment" if self.event_type == "order.placed" else "trip-booking"

    @property
    def key(self) -> str:
        return str(self.body.get("order_id") or self.body.get("trip_id"))

    @property
    def authorization(self) -> dict[str, Any]:
        """The body of the trip's ``payment.authorized`` event: its correlation value, the
        trip id, and what ``charge-payment`` reads from it."""
        return {"trip_id": self.key, "authorization_id": f"au-{self.key}"}


def samples(run: str) -> list[Sample]:
    """One saga of each kind; ``run`` makes the business keys unique to this demo run."""

    def order(n: int, card: str, address: str, total: float = 42.5) -> dict[str, Any]:
        return {
            "order_id": f"o-{run}-{n}",
            "items": ORDER_ITEMS,
            "total": total,
            "card": card,
            "address": address,
        }

    def trip(n: int, hotel: str) -> dict[str, Any]:
        return {
            "trip_id": f"t-{run}-{n}",
            "flight": "LH-400",
            "hotel": hotel,
            "nights": 3,
            "total": 980,
            "card": CARD_OK,
        }

    return [
        Sample(
            "an order under 1000: the fraud review is skipped, the order completes",
            "order.placed",
            order(1, CARD_OK, "1 Main St"),
            "completed",
        ),
        Sample(
            "an order of 1500: the fraud review runs, then the order completes",
            "order.placed",
            order(2, CARD_OK, "2 Main St", total=1500),
            "completed",
        ),
        Sample(
            "a card that fails once, retried, then completes",
            "order.placed",
            order(3, CARD_FLAKY, "3 Main St"),
            "completed",
        ),
        Sample(
            "a declined card: the stock is released",
            "order.placed",
            order(4, CARD_DECLINED, "4 Main St"),
            "compensated",
        ),
        Sample(
            "a trip: its payment authorized while it waits, then flight and hotel at once",
            "trip.requested",
            trip(1, "Harbour View"),
            "completed",
            Authorize.WHEN_WAITING,
        ),
        Sample(
            "a trip whose payment was authorized before it was requested: kept, then taken",
            "trip.requested",
            trip(2, "Harbour View"),
            "completed",
            Authorize.BEFORE,
        ),
        Sample(
            "a trip whose hotel is full: the flight is cancelled, the card refunded",
            "trip.requested",
            trip(3, "FULL"),
            "compensated",
            Authorize.WITH,
        ),
        Sample(
            "a hotel that never confirms in time: both bookings cancelled at once, the card "
            "refunded",
            "trip.requested",
            trip(4, "slow:8s Grand Hotel"),
            "compensated",
            Authorize.WITH,
        ),
    ]
