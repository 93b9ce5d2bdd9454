"""The participant SDK: handle saga commands, reply, and never do one thing twice.

Example::

    from participants import Delivery, Participant, StepError

    inventory = Participant("inventory", amqp_url=..., mongodb_url=..., database="shop")

    @inventory.action("reserve_stock")
    async def reserve(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        if not input["items"]:
            raise StepError("empty_order", "nothing to reserve")
        return {"reservation_id": f"r-{delivery.saga_id}"}

    @inventory.compensation("release_stock")
    async def release(input: dict[str, Any], delivery: Delivery) -> None: ...

    await inventory.run()

The SDK declares the topology of SPEC §3, replies per the contract, stores each final
outcome under the command's idempotency key (a repeated key gets the same reply without
the handler running again), answers a compensation whose action never ran with success,
and dead-letters commands that break the contract.
"""

from participants._delivery import Delivery
from participants._errors import RetryableError, StepError
from participants._execution import Handler
from participants._participant import Participant
from participants.settings import ParticipantSettings

__all__ = [
    "Delivery",
    "Handler",
    "Participant",
    "ParticipantSettings",
    "RetryableError",
    "StepError",
]
