"""The saga service: thin glue between the ports and the pure engine.

Theory of operation
-------------------
Every change to an instance is one *transition*, applied the same way whatever caused it
(a trigger event, a REST call, a reply, a timer, an operator):

1. load the instance: from the bounded in-memory cache of the states this process last
   saved (no round trip), else one ``find_one`` (a claimed timer brings it along instead);
2. run the engine, which returns the new state with the emitted commands appended to its
   ``outbox``;
3. ``save_saga(state, expected_revision)``: one conditional replace (the MongoDB store
   group-commits the saves of concurrent transitions into one round trip). When another writer
   got there first the save writes nothing; the transition is recomputed from a fresh
   read (bounded retries), so it applies exactly once and is never lost. A cached state
   that another replica has since changed is stale in exactly this way: its save fails
   and the transition is recomputed from a fresh read, so the cache never decides anything
   a read would not have;
4. publish the new commands, waiting for the broker's confirms — only after step 3, so no
   command leaves for a change that was not persisted;
5. queue the published ``(saga id, message id)`` pairs; a background task removes them from
   the outboxes in one round trip per batch (``clear_outbox``), not one per transition. The
   saga's next save drops them from the stored outbox anyway (step 3 writes the outbox
   without the entries known to be published), so that save takes them off the queue: only
   a saga's last commands, or those of a saga that waits, cost a clear.

A crash between 3 and 4 leaves the commands in the outbox; ``relay_unpublished`` sends every
entry older than ``relay_age`` again (at least once; the idempotency key makes a resend
harmless). The caller of ``on_event``/``on_reply`` acknowledges the message only after the
call returns, i.e. after 3 and 4: a crash before the ack means a redelivery, which the
engine records as a duplicate and otherwise ignores.

This module imports no driver: only the ports, the engine and the definitions' models.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from coordinator.engine.engine import Options, handle, start
from coordinator.engine.messages import (
    CancelRequested,
    Input,
    ReplyReceived,
    RetryRequested,
    SagaStarted,
    TimerFired,
    Transition,
    TriggerRepeated,
)
from coordinator.engine.state import Command, SagaState
from coordinator.errors import (
    AdapterError,
    SagaError,
    SagaNotFound,
    UnknownDefinition,
)
from coordinator.logging import saga_extra
from coordinator.metrics import SagaMetrics
from coordinator.otel import TransitionObserver
from coordinator.ports import DuplicateSaga, Publisher, SagaStore
from coordinator.tracing import new_traceparent, valid_traceparent
from schemas.definition import SagaDefinition
from schemas.envelope import HEADER_ATTEMPT, HEADER_KIND, HEADER_SAGA_ID, HEADER_STEP
from schemas.references import ReferenceMissing, resolve

__all__ = ["MessageRejected", "SagaBusy", "SagaService", "ServiceStats"]

log = logging.getLogger(__name__)

TriggerBinder = Callable[[set[str]], Awaitable[None]]
_RECENT_LIMIT = 100_000


class MessageRejected(SagaError):
    """An incoming message cannot be applied; ``reason`` goes to the dead-letter queue."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class SagaBusy(SagaError):
    """Other writers kept changing the instance; the caller should try again later."""

    def __init__(self, saga_id: str, attempts: int) -> None:
        self.saga_id = saga_id
        super().__init__(
            f"saga {saga_id!r} changed under {attempts} consecutive transitions; retry later"
        )


@dataclass(slots=True)
class ServiceStats:
    """Cheap counters, for logs, metrics and tests."""

    transitions: int = 0
    conflicts: int = 0
    published: int = 0
    relayed: int = 0
    timers_fired: int = 0
    outbox_cleared: int = 0
    outbox_flushes: int = 0


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
        state_cache: int = 10_000,
        new_trace: Callable[[], str] = new_traceparent,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._options = options
        self._clock = clock
        self._random = random
        self._new_id = new_id
        self._conflict_retries = conflict_retries
        self._relay_age = relay_age
        self._timer_lease = timer_lease
        self._batch = batch
        self._binder = trigger_binder
        self._observers: list[TransitionObserver] = [
            observer for observer in (metrics, spans) if observer is not None
        ]
        self._new_trace = new_trace
        self.stats = ServiceStats()
        self._definitions: dict[tuple[str, int], SagaDefinition] = {}
        self._latest: list[SagaDefinition] = []
        self._latest_loaded_at: datetime | None = None
        self._to_clear: dict[str, list[str]] = {}
        self._queued_at: dict[str, datetime] = {}
        self._cache_size = state_cache
        self._cache: OrderedDict[str, SagaState] = OrderedDict()
        self._clear_wakeup = asyncio.Event()
        self._recently_published: dict[str, None] = {}

    # -- definitions ------------------------------------------------------------------
    async def definition(self, name: str, version: int | None = None) -> SagaDefinition:
        """One definition (the latest when ``version`` is None); cached, they never change."""
        if version is not None and (cached := self._definitions.get((name, version))):
            return cached
        stored = await self._store.get_definition(name, version)
        if stored is None:
            raise UnknownDefinition(name, version)
        found = stored.definition
        self._definitions[(found.name, found.version)] = found
        return found

    async def refresh_definitions(self) -> set[str]:
        """Reload the latest definitions; bind and return every trigger event."""
        latest = [stored.definition for stored in await self._store.latest_definitions()]
        for found in latest:
            self._definitions[(found.name, found.version)] = found
        self._latest = latest
        self._latest_loaded_at = self._clock()
        events = {d.trigger.event for d in latest if d.trigger is not None}
        if self._binder is not None:
            await self._binder(events)
        return events

    async def register_definition(self, definition: SagaDefinition, source: str) -> str:
        """Store a definition (``created`` or ``identical``) and bind its trigger."""
        outcome = await self._store.register_definition(definition, source)
        await self.refresh_definitions()
        return outcome

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
        definition = await self.definition(definition_name, version)
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
        state = self._prepare(transition.state, None)
        try:
            await self._store.insert_saga(state)
        except DuplicateSaga as duplicate:
            existing = duplicate.existing
            if not source.startswith("event"):
                return existing, False
            repeated = await self._apply(
                existing.id,
                lambda at: TriggerRepeated(at=at, source=source, message_id=message_id),
            )
            return repeated.state, False
        self._remember(state)
        self.stats.transitions += 1
        for observer in self._observers:
            observer.record_transition(None, state)
        log.info(
            "saga started (%s v%d, key %s, from %s)",
            definition.name,
            definition.version,
            key,
            source,
            extra=saga_extra(state.id, _last_step(state)),
        )
        await self._publish(transition.commands)
        return state, True

    async def on_event(
        self,
        event_type: str,
        body: dict[str, Any],
        message_id: str | None,
        traceparent: str | None,
    ) -> int:
        """Start one saga per latest definition triggered by ``event_type``.

        Returns how many instances were created; raises ``MessageRejected`` when a
        definition's trigger key or input cannot be resolved from the event.
        """
        matching = self._triggered_by(event_type)
        if not matching and self._stale(timedelta(seconds=1)):
            await self.refresh_definitions()
            matching = self._triggered_by(event_type)
        if not matching:
            log.info("event %s (%s) triggers no definition", event_type, message_id)
            return 0
        problems: list[str] = []
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
            _, new = await self.start_saga(
                definition.name,
                saga_input,
                version=definition.version,
                key=key,
                source=f"event:{event_type}",
                message_id=message_id,
                traceparent=traceparent,
            )
            created += int(new)
        if problems:
            raise MessageRejected("; ".join(problems))
        return created

    def _triggered_by(self, event_type: str) -> list[SagaDefinition]:
        return [d for d in self._latest if d.trigger is not None and d.trigger.event == event_type]

    def _stale(self, age: timedelta) -> bool:
        loaded = self._latest_loaded_at
        return loaded is None or self._clock() - loaded > age

    # -- advancing --------------------------------------------------------------------
    async def on_reply(self, saga_id: str, reply: ReplyReceived) -> Transition | None:
        """Apply a participant's reply; a reply for an unknown saga is only logged."""
        try:
            return await self._apply(
                saga_id, lambda _at: reply, delivered=(reply.step, reply.kind, reply.attempt)
            )
        except SagaNotFound:
            log.warning(
                "reply for an unknown saga acknowledged",
                extra=saga_extra(saga_id, reply.step, kind=reply.kind, attempt=reply.attempt),
            )
            return None

    async def cancel(self, saga_id: str, reason: str) -> Transition:
        return await self._apply(saga_id, lambda at: CancelRequested(reason=reason, at=at))

    async def retry(self, saga_id: str) -> Transition:
        return await self._apply(saga_id, lambda at: RetryRequested(at=at))

    async def fire_due_timers(self) -> int:
        """Claim the instances whose ``wake_at`` has come and fire their timers."""
        claimed = await self._store.claim_due(self._clock(), self._timer_lease, self._batch)
        if not claimed:
            return 0
        results = await asyncio.gather(
            *(self._apply(s.id, lambda at: TimerFired(at=at), first=s) for s in claimed),
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

    async def relay_unpublished(self) -> int:
        """Publish outbox entries left behind (a crash between save and publish)."""
        older_than = self._clock() - self._relay_age
        states = await self._store.unpublished(older_than, self._batch)
        pending: list[Command] = []
        for state in states:
            for command in state.outbox:
                if command.message_id in self._recently_published:
                    self._queue_clear([command])  # published here; its clear was lost
                else:
                    pending.append(command)
        if pending:
            await self._publish(pending, raise_errors=True)
            self.stats.relayed += len(pending)
            log.info("relayed %d unpublished commands", len(pending))
        return len(pending)

    async def _apply(
        self,
        saga_id: str,
        make_input: Callable[[datetime], Input],
        *,
        first: SagaState | None = None,
        delivered: tuple[str, str, int] | None = None,
    ) -> Transition:
        state = first
        cached = False
        if state is None and (state := self._cache.get(saga_id)) is not None:
            cached = True
            self._cache.move_to_end(saga_id)
        for attempt in range(self._conflict_retries):
            if state is None:
                state = await self._store.load_saga(saga_id)
                if state is None:
                    raise SagaNotFound(saga_id)
            definition = await self.definition(state.definition, state.definition_version)
            expected = state.revision
            transition = handle(
                definition,
                state,
                make_input(self._clock()),
                options=self._options,
                random=self._random,
            )
            if not transition.changed:
                if cached:  # a stale cached state must not decide "nothing to do": read it
                    self._forget(saga_id)
                    state, cached = None, False
                    continue
                return transition
            new_state = self._prepare(transition.state, expected, delivered)
            if await self._store.save_saga(new_state, expected):
                self._remember(new_state)
                self._superseded_clears(new_state)
                self.stats.transitions += 1
                for observer in self._observers:
                    observer.record_transition(state, new_state)
                self._log_transition(new_state)
                await self._publish(transition.commands)
                return replace(transition, state=new_state)
            self.stats.conflicts += 1
            self._forget(saga_id)
            state, cached = None, False
            await asyncio.sleep(self._random() * 0.01 * (attempt + 1))
        raise SagaBusy(saga_id, self._conflict_retries)

    # -- the state cache ----------------------------------------------------------------
    def _remember(self, state: SagaState) -> None:
        """Cache the state just saved (never replacing a newer revision); evict the LRU.

        A finished saga (completed, compensated, or failed and waiting for an operator) is
        dropped instead: it rarely moves again, and a late reply or an operator can afford
        the read. So the cache holds the sagas in flight, not the history of the service.
        """
        if self._cache_size <= 0:
            return
        if state.terminal or state.status == "failed":
            self._cache.pop(state.id, None)
            return
        known = self._cache.get(state.id)
        if known is not None and known.revision > state.revision:
            return  # a later transition of this process saved first
        self._cache[state.id] = state
        self._cache.move_to_end(state.id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _forget(self, saga_id: str) -> None:
        self._cache.pop(saga_id, None)

    def _prepare(
        self,
        state: SagaState,
        expected: int | None,
        delivered: tuple[str, str, int] | None = None,
    ) -> SagaState:
        """Raise the revision past ``expected``; drop outbox entries known to be published.

        Known: confirmed by the broker to this process (the clear may still be queued), or
        answered — a reply for (step, kind, attempt) proves its command was delivered. Without
        this, a transition that read the instance just before another replica's clear would
        write the cleared entries back, and the relay would send them again.
        """
        update: dict[str, Any] = {}
        if expected is not None and state.revision <= expected:
            update["revision"] = expected + 1
        kept = [c for c in state.outbox if not self._known_published(c, delivered)]
        if len(kept) != len(state.outbox):
            update["outbox"] = kept
        return state.model_copy(update=update) if update else state

    def _known_published(self, command: Command, delivered: tuple[str, str, int] | None) -> bool:
        if command.message_id in self._recently_published:
            return True
        if delivered is None:
            return False
        headers = command.headers
        return (
            headers.get(HEADER_STEP),
            headers.get(HEADER_KIND),
            headers.get(HEADER_ATTEMPT),
        ) == delivered

    @staticmethod
    def _log_transition(state: SagaState) -> None:
        entry = state.history[-1] if state.history else None
        level = logging.INFO if state.status != "running" else logging.DEBUG
        if not log.isEnabledFor(level):
            return
        log.log(
            level,
            "%s → %s",
            entry.event if entry else "transition",
            state.status,
            extra=saga_extra(
                state.id,
                entry.step if entry else None,
                kind=entry.kind if entry else None,
                attempt=entry.attempt if entry else None,
            ),
        )

    # -- publishing and the outbox ---------------------------------------------------
    async def _publish(self, commands: Sequence[Command], *, raise_errors: bool = False) -> None:
        if not commands:
            return
        try:
            await self._publisher.publish_commands(commands)
        except AdapterError as exc:
            if raise_errors:
                raise
            # Persisted in the outbox: the relay sends them once the broker is back.
            log.warning("publishing %d commands failed, left to the relay: %s", len(commands), exc)
            return
        self.stats.published += len(commands)
        self._queue_clear(commands)

    def _queue_clear(self, commands: Iterable[Command]) -> None:
        now = self._clock()
        for command in commands:
            saga_id = str(command.headers.get(HEADER_SAGA_ID, ""))
            self._to_clear.setdefault(saga_id, []).append(command.message_id)
            self._queued_at.setdefault(saga_id, now)
            self._recently_published[command.message_id] = None
        while len(self._recently_published) > _RECENT_LIMIT:
            del self._recently_published[next(iter(self._recently_published))]
        self._clear_wakeup.set()

    def _superseded_clears(self, saved: SagaState) -> None:
        """Unqueue the clears ``saved`` made moot: its save wrote the outbox without them."""
        queued = self._to_clear.get(saved.id)
        if queued is None:
            return
        still = {command.message_id for command in saved.outbox}
        kept = [message_id for message_id in queued if message_id in still]
        if kept:
            self._to_clear[saved.id] = kept
        else:
            del self._to_clear[saved.id]
            del self._queued_at[saved.id]

    def _take_clears(self, limit: int, queued_before: datetime | None) -> list[tuple[str, str]]:
        """Up to about ``limit`` queued entries, oldest first; only older ones if given."""
        batch: list[tuple[str, str]] = []
        while self._to_clear and len(batch) < limit:
            saga_id = next(iter(self._to_clear))
            if queued_before is not None and self._queued_at[saga_id] > queued_before:
                break
            del self._queued_at[saga_id]
            batch.extend((saga_id, message_id) for message_id in self._to_clear.pop(saga_id))
        return batch

    async def flush_outbox(self, queued_before: datetime | None = None) -> int:
        """Clear the queued published entries now (only those queued before ``queued_before``
        if given), in one round trip per batch."""
        cleared = 0
        while batch := self._take_clears(1000, queued_before):
            try:
                await self._store.clear_outbox(batch)
            except BaseException:
                requeued: dict[str, list[str]] = {}
                for saga_id, message_id in batch:
                    requeued.setdefault(saga_id, []).append(message_id)
                for saga_id, message_ids in self._to_clear.items():
                    requeued.setdefault(saga_id, []).extend(message_ids)
                now = self._clock()
                self._queued_at = {
                    saga_id: self._queued_at.get(saga_id, now) for saga_id in requeued
                }
                self._to_clear = requeued
                raise
            cleared += len(batch)
            self.stats.outbox_cleared += len(batch)
            self.stats.outbox_flushes += 1
        return cleared

    async def run_outbox_clearer(self, retry_delay: float = 1.0, linger: float = 1.0) -> None:
        """Background task: flush queued clears in batches (cancel to stop).

        Every entry waits ``linger`` seconds after it was queued; meanwhile the sagas that
        move on take their clears off the queue (their next save drops the entries), and
        the entries that come due together leave in one batch. One second covers a
        participant's usual answer time, so most commands never cost a clear of their own,
        and stays well below ``relay_age``. An entry waiting for its clear is harmless:
        this process never relays what it published, and others relay only entries older
        than ``relay_age``.
        """
        while True:
            await self._clear_wakeup.wait()
            self._clear_wakeup.clear()
            while self._queued_at:
                due = next(iter(self._queued_at.values())) + timedelta(seconds=linger)
                wait = (due - self._clock()).total_seconds()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue  # the oldest entry may have been taken off meanwhile
                try:
                    await self.flush_outbox(queued_before=self._clock() - timedelta(seconds=linger))
                except AdapterError as exc:
                    log.warning("clearing published outbox entries failed: %s", exc)
                    await asyncio.sleep(retry_delay)


def _business_key(value: Any) -> str:
    """A trigger key: a non-empty string or a number, as text."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"the business key must be a non-empty string or a number, not {value!r}")
    text = str(value)
    if not text:
        raise ValueError("the business key is an empty string")
    return text


def _last_step(state: SagaState) -> str | None:
    return state.history[-1].step if state.history else None


def default_random() -> float:
    """``random.random``: jitter for the engine's backoffs."""
    return _random.random()
