"""The saga runtime: what runs transitions between the ports and the pure engine.

    service.py       SagaService, the façade (start, events, replies, cancel, retry, timers)
    transitions.py   TransitionRunner: load → engine → conditional save → publish
    definitions.py   DefinitionCatalog: cache, refresh, register, trigger bindings
    cache.py         StateCache: the states this process last saved
    outbox.py        Outbox: publish after save, batched clears, the relay
    errors.py        MessageRejected, SagaBusy
    stats.py         ServiceStats

``docs/runtime.md`` tells the whole story.
"""

from __future__ import annotations

from coordinator.runtime.errors import MessageRejected, SagaBusy
from coordinator.runtime.service import SagaService
from coordinator.runtime.stats import ServiceStats

__all__ = ["MessageRejected", "SagaBusy", "SagaService", "ServiceStats"]
