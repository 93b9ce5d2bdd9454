"""The example participants' input-driven behaviour (handlers called directly)."""

from __future__ import annotations

from typing import Any

import pytest

from participants import Delivery, Participant, RetryableError, StepError
from participants.examples import flights, hotels, inventory, payments, risk, shipping
from participants.examples._common import delay_from, parse_duration

SETTINGS = {"amqp_url": "amqp://", "mongodb_url": "mongodb://127.0.0.1:1/"}


def delivery(attempt: int = 1) -> Delivery:
    return Delivery("s-1", "step", "action", attempt, "s-1:step:action")


async def call(participant: Participant, kind: str, command: str, data: dict[str, Any]) -> Any:
    handler = participant._executor.handlers[kind][command]
    return await handler(data, delivery())


def test_durations() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("3s") == 3.0
    assert delay_from("12 slow:2s road") == 2.0
    assert delay_from("slow lane") == 5.0
    assert delay_from("fast lane") is None
    with pytest.raises(StepError):
        delay_from("slow:soon")


async def test_inventory() -> None:
    participant = inventory.build(**SETTINGS)
    items = [{"sku": "A-1", "qty": 2}]
    output = await call(participant, "action", "reserve_stock", {"order_id": 1, "items": items})
    assert output["reservation_id"].startswith("r-")
    with pytest.raises(StepError, match="out_of_stock"):
        oos = {"order_id": 1, "items": [{"sku": "OOS-9", "qty": 1}]}
        await call(participant, "action", "reserve_stock", oos)
    with pytest.raises(StepError, match="invalid_input"):
        await call(participant, "action", "reserve_stock", {"items": items})
    released = await call(participant, "compensation", "release_stock", output)
    assert released["released"] is True


async def test_payments() -> None:
    participant = payments.build(**SETTINGS)
    handler = participant._executor.handlers["action"]["charge"]
    order = {"order_id": "o", "amount": "10.50", "card": payments.CARD_FLAKY}
    with pytest.raises(RetryableError, match="processor_unavailable"):
        await handler(order, delivery(1))
    charged = await handler(order, delivery(2))
    assert charged is not None
    assert charged["charge_id"].startswith("ch-")
    with pytest.raises(StepError, match="card_declined"):
        await handler({**order, "card": payments.CARD_DECLINED}, delivery(1))
    with pytest.raises(StepError, match="invalid_amount"):
        await handler({**order, "amount": -1}, delivery(2))


async def test_risk() -> None:
    participant = risk.build(**SETTINGS)
    order = {"order_id": "o", "amount": 1500, "card": "4242-4242-4242-4242"}
    reviewed = await call(participant, "action", "review", order)
    assert reviewed["review_id"].startswith("rv-") and reviewed["verdict"] == "approved"
    with pytest.raises(StepError, match="fraud_suspected"):
        await call(participant, "action", "review", {**order, "card": risk.CARD_HIGH_RISK})
    with pytest.raises(StepError, match="invalid_amount"):
        await call(participant, "action", "review", {**order, "amount": 0})


async def test_shipping_flights_hotels() -> None:
    ship = shipping.build(**SETTINGS)
    output = await call(ship, "action", "create_shipment", {"order_id": 1, "address": "x"})
    assert output["tracking_number"].startswith("TRK-")
    flight = flights.build(**SETTINGS)
    with pytest.raises(StepError, match="no_seats"):
        await call(flight, "action", "book_flight", {"trip_id": 1, "flight": "SOLD-OUT"})
    hotel = hotels.build(**SETTINGS)
    with pytest.raises(StepError, match="no_rooms"):
        await call(hotel, "action", "book_room", {"trip_id": 1, "hotel": "FULL", "nights": 2})
    booked = await call(hotel, "action", "book_room", {"trip_id": 1, "hotel": "Ritz", "nights": 2})
    cancelled = await call(hotel, "compensation", "cancel_room", booked)
    assert cancelled == {"booking_id": booked["booking_id"], "cancelled": True}
    again = await call(hotel, "compensation", "cancel_room", booked)
    assert again["cancelled"] is False
    booked = await call(flight, "action", "book_flight", {"trip_id": 1, "flight": "LH-400"})
    assert booked["booking_id"].startswith("fl-")
    cancelled = await call(flight, "compensation", "cancel_flight", booked)
    assert cancelled == {"booking_id": booked["booking_id"], "cancelled": True}
