"""The errors the runtime raises to its callers (consumers, REST, timers)."""

from __future__ import annotations

from coordinator.errors import InputRejected, SagaError

__all__ = ["MessageRejected", "SagaBusy"]


class MessageRejected(InputRejected):
    """An incoming message cannot be applied; ``reason`` goes to the dead-letter queue."""


class SagaBusy(SagaError):
    """Other writers kept changing the instance; the caller should try again later."""

    def __init__(self, saga_id: str, attempts: int) -> None:
        self.saga_id = saga_id
        super().__init__(
            f"saga {saga_id!r} changed under {attempts} consecutive transitions; retry later"
        )
