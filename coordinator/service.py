"""The saga service, kept at its old import path: the code lives in ``coordinator.runtime``."""

from __future__ import annotations

from coordinator.runtime import (
    MessageRejected,
    SagaBusy,
    SagaService,
    ServiceStats,
)

__all__ = ["MessageRejected", "SagaBusy", "SagaService", "ServiceStats"]
