"""The ``risk`` example participant: reviews an order for fraud before its card is charged."""

from __future__ import annotations

import uuid
from typing import Any

from participants import Delivery, Participant, ParticipantSettings, StepError
from participants.examples._common import amount, main, maybe_delay, require

__all__ = ["CARD_HIGH_RISK", "NAME", "build"]

NAME = "risk"
#: Always refused as ``fraud_suspected`` (not retryable).
CARD_HIGH_RISK = "4000-0000-0000-4954"


def build(**settings: Any) -> Participant:
    """A ``risk`` participant; ``settings`` are ``ParticipantSettings`` fields."""
    participant = Participant.from_settings(NAME, ParticipantSettings(**settings))

    @participant.action("review")
    async def review(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        await maybe_delay(input)
        require(input, "order_id", (str, int))
        reviewed = amount(input.get("amount"))
        card = require(input, "card", str)
        if card == CARD_HIGH_RISK:
            raise StepError("fraud_suspected", "the card's risk score is too high")
        return {
            "review_id": f"rv-{uuid.uuid4().hex[:12]}",
            "verdict": "approved",
            "amount": str(reviewed),
        }

    return participant


if __name__ == "__main__":
    main(build)
