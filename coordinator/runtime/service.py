"""``SagaService``: the façade the consumers, the REST API and the loops call.

It starts sagas (from a trigger event or a REST call) and hands every other change to the
``TransitionRunner``; definitions, the state cache and the outbox live in their own
modules (see ``docs/runtime.md``). The caller of ``on_event``/``on_reply`` acknowledges
the message only after the call returns, i.e. after the transition is saved and its
commands published: a crash before the ack means a redelivery, which the engine records as
a duplicate and otherwise ignores.

This package imports no driver: only the ports, the engine and the definitions' models.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from coordinator.engine.engine import Options, start
from coordinator.engine.messages import (
    CancelRequested,
    ReplyReceived,
    RetryRequested,
    SagaStarted,
    TimerFired,
    Transition,
    TriggerRepeated,
)
from coordinator.engine.state import SagaState
from coordinator.errors import AdapterError, SagaNotFound, UnstorableData
from coordinator.logging import saga_extra
from coordinator.metrics import SagaMetrics
from coordinator.otel import TransitionObserver
from coordinator.ports import DuplicateSaga, Publisher, SagaStore
from coordinator.runtime.cache import DEFAULT_STATE_CACHE_BYTES, StateCache
from coordinator.runtime.definitions import DefinitionCatalog, TriggerBinder
from coordinator.runtime.errors import MessageRejected
from coordinator.runtime.events import AwaitedEvents
from coordinator.runtime.outbox import Outbox
from coordinator.runtime.stats import ServiceStats
from coordinator.runtime.transitions import TransitionRunner
from coordinator.tracing import new_traceparent, valid_traceparent
from schemas.definition import SagaDefinition
from schemas.references import ReferenceMissing, resolve

__all__ = ["SagaService"]

log = logging.getLogger("coordinator.service")


class SagaService:
    """Starts and advances sagas: load → engine → conditional save → publish → clear."""

    def __init__(
        self,
        store: SagaStore,
        publisher: Publisher,
        *,
        options: Options,
        clock: Callable[[], datetime],
        random: Callable[[], float],
        new_id: Callable[[], str],
        conflict_retries: int = 20,
        relay_age: timedelta = timedelta(seconds=5),
        timer_lease: timedelta = timedelta(seconds=30),
        batch: int = 100,
        trigger_binder: TriggerBinder | None = None,
        metrics: SagaMetrics | None = None,
        spans: TransitionObserver | None = None,
        state_cache_bytes: int = DEFAULT_STATE_CACHE_BYTES,
        new_trace: Callable[[], str] = new_traceparent,
    ) -> None:
        self._store = store
        self._options = options
        self._clock = clock
        self._random = random
        self._new_id = new_id
        self._timer_lease = timer_lease
        self._batch = batch
        self._new_trace = new_trace
        self.stats = ServiceStats()
        self.definitions = DefinitionCatalog(store, clock=clock, binder=trigger_binder)
        self.cache = StateCache(state_cache_bytes)
        self.outbox = Outbox(
            store, publisher, clock=clock, stats=self.stats, relay_age=relay_age, batch=batch
        )
        self.runner = TransitionRunner(
            store,
            definitions=self.definitions,
            cache=self.cache,
            outbox=self.outbox,
            options=options,
            clock=clock,
            random=random,
            stats=self.stats,
            observers=[o for o in (metrics, spans) if o is not None],
            conflict_retries=conflict_retries,
        )
        self.events = AwaitedEvents(
            store,
            definitions=self.definitions,
            runner=self.runner,
            clock=clock,
            new_id=new_id,
            stats=self.stats,
        )

    # -- definitions ------------------------------------------------------------------
    async def definition(self, name: str, version: int | None = None) -> SagaDefinition:
        """One definition (the latest when ``version`` is None)."""
        return await self.definitions.get(name, version)

    async def refresh_definitions(self) -> set[str]:
        """Reload the latest definitions; bind and return every trigger event."""
        return await self.definitions.refresh()

    async def register_definition(self, definition: SagaDefinition, source: str) -> str:
        """Store a definition (``created`` or ``identical``) and bind its trigger."""
        return await self.definitions.register(definition, source)

    async def retire_definition(self, name: str) -> None:
        """Retire ``name``: its trigger no longer starts sagas (the binding is removed);
        raises ``UnknownDefinition`` when no version of it is registered."""
        await self.definitions.retire(name)

    # -- starting ---------------------------------------------------------------------
    async def start_saga(
        self,
        definition_name: str,
        input: Any,
        *,
        version: int | None = None,
        key: str | None = None,
        source: str = "api",
        message_id: str | None = None,
        traceparent: str | None = None,
    ) -> tuple[SagaState, bool]:
        """Start an instance; ``(instance, created)``. A used key returns the existing one."""
        definition = await self.definitions.get(definition_name, version)
        started = SagaStarted(
            saga_id=self._new_id(),
            key=key,
            input=input,
            at=self._clock(),
            source=source,
            message_id=message_id,
            # An invalid or missing trace context starts a new trace (W3C trace context).
            traceparent=valid_traceparent(traceparent) or self._new_trace(),
        )
        transition = start(definition, started, options=self._options, random=self._random)
        state = self.runner.prepare(transition.state, None)
        try:
            await self._store.insert_saga(state)
        except DuplicateSaga as duplicate:
            existing = duplicate.existing
            if not source.startswith("event"):
                return existing, False
            repeated = await self.runner.apply(
                existing.id,
                lambda at: TriggerRepeated(at=at, source=source, message_id=message_id),
            )
            return repeated.state, False
        self.runner.saved(None, state)
        log.info(
            "saga started (%s v%d, key %s, from %s)",
            definition.name,
            definition.version,
            key,
            source,
            extra=saga_extra(state.id, state.history[-1].step if state.history else None),
        )
        await self.outbox.publish(transition.commands)
        await self.runner.waited(replace(transition, state=state))
        return state, True

    async def on_event(
        self,
        event_type: str,
        body: dict[str, Any],
        message_id: str | None,
        traceparent: str | None,
    ) -> int:
        """Start one saga per latest definition triggered by ``event_type``, and complete
        the steps waiting for it (``AwaitedEvents``): an event may do both.

        Returns how many instances were created; raises ``MessageRejected`` when a
        definition's trigger key or input cannot be resolved from the event, the saga it
        would start cannot be stored, or the event cannot be kept for the steps that await
        it (or stored in a saga it completes).
        """
        matching = self.definitions.triggered_by(event_type)
        awaited = self.events.awaited(event_type)
        if not matching and not awaited and self.definitions.stale(timedelta(seconds=1)):
            await self.definitions.refresh()
            matching = self.definitions.triggered_by(event_type)
            awaited = self.events.awaited(event_type)
        if not matching and not awaited:
            log.info("event %s (%s) triggers and completes nothing", event_type, message_id)
            return 0
        problems: list[str] = []
        if awaited:
            try:
                await self.events.on_event(event_type, body, message_id)
            except MessageRejected as rejected:
                problems.append(rejected.reason)
        created = 0
        for definition in matching:
            assert definition.trigger is not None
            context = {"event": body}
            try:
                key = _business_key(resolve(definition.trigger.key, context))
                saga_input = resolve(definition.trigger.input, context)
            except (ReferenceMissing, ValueError) as exc:
                problems.append(f"definition {definition.name!r} trigger: {exc}")
                continue
            try:
                _, new = await self.start_saga(
                    definition.name,
                    saga_input,
                    version=definition.version,
                    key=key,
                    source=f"event:{event_type}",
                    message_id=message_id,
                    traceparent=traceparent,
                )
            except UnstorableData as exc:
                problems.append(f"definition {definition.name!r}: {exc}")
                continue
            created += int(new)
        if problems:
            raise MessageRejected("; ".join(problems))
        return created

    # -- advancing --------------------------------------------------------------------
    async def on_reply(self, saga_id: str, reply: ReplyReceived) -> Transition | None:
        """Apply a participant's reply; a reply for an unknown saga is only logged.

        A success whose output cannot be stored fails the attempt with ``invalid_reply``.
        """
        try:
            return await self.runner.apply(
                saga_id,
                lambda _at: reply,
                delivered=(reply.step, reply.kind, reply.attempt),
                stop_unstorable=True,
            )
        except SagaNotFound:
            log.warning(
                "reply for an unknown saga acknowledged",
                extra=saga_extra(saga_id, reply.step, kind=reply.kind, attempt=reply.attempt),
            )
            return None

    async def deliver_event(
        self, saga_id: str, event: str, body: dict[str, Any], message_id: str | None
    ) -> Transition:
        """``POST /v1/sagas/{id}/events``: complete this saga's step waiting for ``event``;
        ``refused`` when none waits for it or the body does not match."""
        return await self.events.deliver(saga_id, event, body, message_id)

    async def cancel(self, saga_id: str, reason: str) -> Transition:
        return await self.runner.apply(saga_id, lambda at: CancelRequested(reason=reason, at=at))

    async def retry(self, saga_id: str) -> Transition:
        return await self.runner.apply(saga_id, lambda at: RetryRequested(at=at))

    async def fire_due_timers(self) -> int:
        """Claim the instances whose ``wake_at`` has come and fire their timers; every few
        seconds, also sweep the event buffer (``AwaitedEvents.sweep``)."""
        try:
            await self.events.sweep()
        except AdapterError as exc:
            log.warning("event buffer sweep: %s", exc)
        claimed = await self._store.claim_due(self._clock(), self._timer_lease, self._batch)
        if not claimed:
            return 0
        results = await asyncio.gather(
            *(
                self.runner.apply(s.id, lambda at: TimerFired(at=at), first=s, stop_unstorable=True)
                for s in claimed
            ),
            return_exceptions=True,
        )
        fired = 0
        for state, result in zip(claimed, results, strict=True):
            if isinstance(result, BaseException):
                # The lease expires and a later poll (here or elsewhere) tries again.
                log.warning("timer failed: %r", result, extra=saga_extra(state.id))
            else:
                fired += 1
        self.stats.timers_fired += fired
        return fired

    # -- the outbox -------------------------------------------------------------------
    async def relay_unpublished(self) -> int:
        """Publish outbox entries left behind (a crash between save and publish)."""
        return await self.outbox.relay_unpublished()

    async def flush_outbox(self, queued_before: datetime | None = None) -> int:
        """Clear the queued published entries now, in one round trip per batch."""
        return await self.outbox.flush(queued_before)

    async def run_outbox_clearer(self, retry_delay: float = 1.0, linger: float = 1.0) -> None:
        """Background task: flush queued clears in batches (cancel to stop)."""
        await self.outbox.run_clearer(retry_delay, linger)


def _business_key(value: Any) -> str:
    """A trigger key: a non-empty string or a number, as text."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"the business key must be a non-empty string or a number, not {value!r}")
    text = str(value)
    if not text:
        raise ValueError("the business key is an empty string")
    return text
