"""The ``inventory`` example participant: reserves and releases stock."""

from __future__ import annotations

import uuid
from typing import Any

from participants import Delivery, Participant, ParticipantSettings, StepError
from participants.examples._common import main, maybe_delay, require, undo_target

__all__ = ["NAME", "build"]

NAME = "inventory"


def build(**settings: Any) -> Participant:
    """An ``inventory`` participant; ``settings`` are ``ParticipantSettings`` fields."""
    participant = Participant.from_settings(NAME, ParticipantSettings(**settings))
    reservations: dict[str, list[dict[str, Any]]] = {}

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
        reservation_id = f"r-{uuid.uuid4().hex[:12]}"
        reservations[reservation_id] = items
        return {"reservation_id": reservation_id}

    @participant.compensation("release_stock")
    async def release_stock(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        await maybe_delay(input)
        reservation_id = undo_target(input, "reservation_id", delivery)
        released = reservations.pop(reservation_id, None) is not None
        return {"reservation_id": reservation_id, "released": released}

    return participant


if __name__ == "__main__":
    main(build)
