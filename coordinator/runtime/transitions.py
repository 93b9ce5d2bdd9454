"""The transition runner: load → engine → conditional save → publish.

Every change to an instance is one *transition*, applied the same way whatever caused it
(a reply, a timer, an operator, a repeated trigger):

0. wait for the transitions of the same saga already in flight in this process
   (``PerKeyLock``): they would only conflict with each other;
1. load the instance: from the state cache (no round trip), else one ``find_one`` (a
   claimed timer brings it along instead);
2. run the engine, which returns the new state with the emitted commands appended to its
   ``outbox``;
3. ``save_saga(state, expected_revision, base)``: one conditional write of what changed
   since ``base``, the state the engine started from. When another writer got there first
   the save writes nothing; the transition is recomputed from a fresh read
   (bounded retries), so it applies exactly once and is never lost;
4. publish the new commands (``Outbox``) — only after step 3, so no command leaves for a
   change that was not persisted.

When the new state cannot be stored (``UnstorableData``: a reply's output with a key MongoDB
rejects, the saga over its size budget…), retrying is pointless. A success reply is then
applied as the failure ``invalid_reply`` (not retryable) instead, so the attempt fails and
the saga goes on as the definition says; a timer (``stop_unstorable``) stops the saga as
``failed`` with the reason ``unstorable`` rather than firing again and again; any other
caller gets the ``UnstorableData`` (the REST API answers 422, an event is dead-lettered).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from coordinator.engine.engine import Options, handle
from coordinator.engine.messages import Input, ReplyReceived, Transition
from coordinator.engine.state import ErrorInfo, HistoryEntry, SagaState
from coordinator.errors import SagaNotFound, UnstorableData
from coordinator.logging import saga_extra
from coordinator.otel import TransitionObserver
from coordinator.ports import SagaStore
from coordinator.runtime.cache import StateCache
from coordinator.runtime.definitions import DefinitionCatalog
from coordinator.runtime.errors import SagaBusy
from coordinator.runtime.outbox import Delivered, Outbox
from coordinator.runtime.serial import PerKeyLock
from coordinator.runtime.stats import ServiceStats
from schemas.envelope import FailedReply, ReplyError, SucceededReply

INVALID_REPLY = "invalid_reply"
UNSTORABLE = "unstorable"

__all__ = ["TransitionRunner"]

log = logging.getLogger("coordinator.service")


class TransitionRunner:
    """Applies one input to one instance, exactly once, and publishes what it emits."""

    def __init__(
        self,
        store: SagaStore,
        *,
        definitions: DefinitionCatalog,
        cache: StateCache,
        outbox: Outbox,
        options: Options,
        clock: Callable[[], datetime],
        random: Callable[[], float],
        stats: ServiceStats,
        observers: Sequence[TransitionObserver],
        conflict_retries: int,
    ) -> None:
        self._store = store
        self._definitions = definitions
        self._cache = cache
        self._outbox = outbox
        self._options = options
        self._clock = clock
        self._random = random
        self._stats = stats
        self._observers = list(observers)
        self._conflict_retries = conflict_retries
        self._serial = PerKeyLock()
        self.before_save: Callable[[SagaState], Awaitable[None]] | None = None
        """A seam for tests: awaited between the engine's answer and the save, with the
        state about to be saved (e.g. to hold one replica while another commits)."""
        self.on_waiting: Callable[[Transition], Awaitable[None]] | None = None
        """Awaited after a saved transition that made steps wait (``Transition.awaiting``),
        outside the saga's lock: the buffer look-up of ``runtime.events``."""

    async def apply(
        self,
        saga_id: str,
        make_input: Callable[[datetime], Input],
        *,
        first: SagaState | None = None,
        delivered: Delivered | None = None,
        stop_unstorable: bool = False,
    ) -> Transition:
        """Apply ``make_input(now)`` to the saga, after any transition of it in flight here."""
        async with self._serial.hold(saga_id):
            transition = await self._apply(saga_id, make_input, first, delivered, stop_unstorable)
        await self.waited(transition)
        return transition

    async def waited(self, transition: Transition) -> None:
        """Hand a saved transition that made steps wait to ``on_waiting``."""
        if transition.awaiting and transition.changed and self.on_waiting is not None:
            await self.on_waiting(transition)

    async def _apply(
        self,
        saga_id: str,
        make_input: Callable[[datetime], Input],
        first: SagaState | None,
        delivered: Delivered | None,
        stop_unstorable: bool,
    ) -> Transition:
        state = first
        cached = False
        if state is None and (state := self._cache.get(saga_id)) is not None:
            cached = True
        for attempt in range(self._conflict_retries):
            if state is None:
                state = await self._store.load_saga(saga_id)
                if state is None:
                    raise SagaNotFound(saga_id)
            definition = await self._definitions.get(state.definition, state.definition_version)
            expected = state.revision
            message = make_input(self._clock())
            transition = handle(
                definition, state, message, options=self._options, random=self._random
            )
            if not transition.changed:
                if cached:  # a stale cached state must not decide "nothing to do": read it
                    self._cache.forget(saga_id)
                    state, cached = None, False
                    continue
                return transition
            new_state = self.prepare(transition.state, expected, delivered)
            if self.before_save is not None:
                await self.before_save(new_state)
            try:
                won = await self._store.save_saga(new_state, expected, base=state)
            except UnstorableData as exc:
                instead = _invalid_reply(message, exc)
                if instead is not None:
                    log.warning(
                        "a reply's output cannot be stored; the attempt fails: %s",
                        exc,
                        extra=saga_extra(saga_id, instead.step, kind=instead.kind),
                    )
                    make_input = _constant(instead)
                    continue  # the same state, the failure instead of the success
                if not stop_unstorable:
                    raise
                new_state = self._stopped(state, exc)
                transition = Transition(state=new_state)
                won = await self._store.save_saga(new_state, expected, base=state)
            if won:
                self.saved(state, new_state)
                await self._outbox.publish(transition.commands)
                return replace(transition, state=new_state)
            self._stats.conflicts += 1
            self._cache.forget(saga_id)
            state, cached = None, False
            await asyncio.sleep(self._random() * 0.01 * (attempt + 1))
        raise SagaBusy(saga_id, self._conflict_retries)

    def _stopped(self, state: SagaState, exc: UnstorableData) -> SagaState:
        """``state`` stopped as ``failed``: no change the engine makes to it can be stored.

        It is what the engine last left, plus the reason and one history entry; its timers
        are off, so nothing fires again. An operator sees why.
        """
        log.error(
            "the saga's next state cannot be stored; it stops as failed: %s",
            exc,
            extra=saga_extra(state.id),
        )
        now = self._clock()
        reason = ErrorInfo(code=UNSTORABLE, message=str(exc), retryable=False)
        entry = HistoryEntry(
            at=now, event="saga.failed", status="failed", detail=reason.model_dump()
        )
        return state.model_copy(
            update={
                "status": "failed",
                "reason": reason,
                "wake_at": None,
                "updated_at": now,
                "revision": state.revision + 1,
                "history": [*state.history, entry],
            }
        )

    def prepare(
        self, state: SagaState, expected: int | None, delivered: Delivered | None = None
    ) -> SagaState:
        """Raise the revision past ``expected``; drop outbox entries known to be published."""
        if expected is not None and state.revision <= expected:
            update: dict[str, Any] = {"revision": expected + 1}
            state = state.model_copy(update=update)
        return self._outbox.without_published(state, delivered)

    def saved(self, before: SagaState | None, state: SagaState) -> None:
        """Book-keeping after ``state`` was persisted: cache, outbox, counters, log."""
        self._cache.remember(state)
        self._outbox.saved(state)
        self._stats.transitions += 1
        for observer in self._observers:
            observer.record_transition(before, state)
        if before is not None:
            _log_transition(state)


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


def _invalid_reply(message: Input, exc: UnstorableData) -> ReplyReceived | None:
    """The failure ``invalid_reply`` in place of a success reply, else None."""
    if not isinstance(message, ReplyReceived) or not isinstance(message.reply, SucceededReply):
        return None
    error = ReplyError(
        code=INVALID_REPLY,
        message=f"the reply's output cannot be stored: {exc}"[:10_000],
        retryable=False,
    )
    failed = FailedReply(status="failed", error=error)
    return replace(message, reply=failed)


def _constant(message: Input) -> Callable[[datetime], Input]:
    return lambda _at: message
