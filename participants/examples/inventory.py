"""The ``inventory`` example participant: reserves and releases stock."""

from __future__ import annotations

from typing import Any

from participants import Delivery, Participant, ParticipantSettings, StepError
from participants.examples._common import Ledger, main, maybe_delay, require

__all__ = ["NAME", "build"]

NAME = "inventory"


def build(**settings: Any) -> Participant:
    """An ``inventory`` participant; ``settings`` are ``ParticipantSettings`` fields."""
    participant = Participant.from_settings(NAME, ParticipantSettings(**settings))
    reservations = Ledger("r", "reservation_id", "released")

    @participant.action("reserve_stock")
    async def reserve_stock(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        await maybe_delay(input)
        require(input, "order_id", (str, int))
        items = require(input, "items", list)
        if not items:
            raise StepError("invalid_input", "no items to reserve")
        for item in items:
            if not isinstance(item, dict):
                raise StepError("invalid_input", "each item must be {sku, qty}")
            sku = require(item, "sku", str)
            qty = require(item, "qty", int)
            if qty < 1:
                raise StepError("invalid_quantity", f"{sku}: quantity {qty} is below 1")
            if sku.startswith("OOS-"):
                raise StepError("out_of_stock", f"{sku} is out of stock")
        return reservations.add(items)

    participant.compensation("release_stock")(reservations.undo)
    return participant


if __name__ == "__main__":
    main(build)
