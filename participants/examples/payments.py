"""The ``payments`` example participant: charges and refunds cards."""

from __future__ import annotations

import uuid
from typing import Any

from participants import Delivery, Participant, ParticipantSettings, RetryableError, StepError
from participants.examples._common import amount, main, maybe_delay, require, undo_target

__all__ = ["CARD_DECLINED", "CARD_FLAKY", "NAME", "build"]

NAME = "payments"
#: Always declined (not retryable).
CARD_DECLINED = "4000-0000-0000-0002"
#: ``processor_unavailable`` (retryable) on attempt 1, success after.
CARD_FLAKY = "4000-0000-0000-0119"


def build(**settings: Any) -> Participant:
    """A ``payments`` participant; ``settings`` are ``ParticipantSettings`` fields."""
    participant = Participant.from_settings(NAME, ParticipantSettings(**settings))
    charges: dict[str, str] = {}

    @participant.action("charge")
    async def charge(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        await maybe_delay(input)
        require(input, "order_id", (str, int))
        charged = amount(input.get("amount"))
        card = require(input, "card", str)
        if card == CARD_DECLINED:
            raise StepError("card_declined", "the issuer declined the card")
        if card == CARD_FLAKY and delivery.attempt == 1:
            raise RetryableError("processor_unavailable", "the card processor did not answer")
        charge_id = f"ch-{uuid.uuid4().hex[:12]}"
        charges[charge_id] = str(charged)
        return {"charge_id": charge_id, "amount": str(charged)}

    @participant.compensation("refund")
    async def refund(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        await maybe_delay(input)
        charge_id = undo_target(input, "charge_id", delivery)
        return {"charge_id": charge_id, "refunded": charges.pop(charge_id, None)}

    return participant


if __name__ == "__main__":
    main(build)
