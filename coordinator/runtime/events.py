"""Awaited events: correlation through an index, the buffer, and why none is lost.

An event of type T may complete ``await`` steps (SPEC §2.1, §4 rule 9). For each
definition version that awaits T, and each of its await steps, the event's correlation
value is ``match`` resolved against the body (``engine.match_value``). Then:

1. **keep it first**: the event goes into the buffer (``SagaStore.buffer_event``), by type
   and values, until the longest ``buffer`` of the steps awaiting T;
2. **then find the sagas waiting for it** through the ``awaiting`` index
   (``SagaStore.waiting_sagas``: running sagas with an entry (T, value)), and hand each one
   an ``EventReceived`` through the ``TransitionRunner`` (per-saga lock, optimistic
   concurrency). The engine checks the match again and completes at most one step per
   saga, and never twice for one ``message_id``.

On the other side, a transition that makes a step wait (``Transition.awaiting``) is
**saved first, then the buffer is read** for (T, its value), and a kept event that matches
(received at most the step's own ``buffer`` before it started waiting) is handed in.

Why no event is lost between "the step starts waiting" and "the event arrives": the event
side writes the buffer and then reads the sagas; the saga side writes the saga and then
reads the buffer. Whatever the interleaving, the later of the two reads comes after both
writes, so at least one side sees the other. When both do, the engine's ``message_id``
check makes the second delivery a recorded no-op (an event without a ``message_id`` gets
one made on arrival, used by both sides). Replicas change nothing to this argument: each
read and write is one MongoDB operation on shared collections.

A crash (or a store error) after a saga was saved waiting and before its buffer read would
lose that read; the recovery pass (``recover``) reads the buffer again for every saga that
started waiting within twice the longest buffer: at a process's first sweep (start-up),
and at the next sweep after a look-up failed here.

An event kept in the buffer completes every step that starts waiting for it within its
buffer time, once per saga. ``expire_events`` counts the kept events whose time passed
without completing any step (``saga_events_expired_total``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from coordinator.engine.flow import match_value, same_value
from coordinator.engine.messages import EventReceived, Transition
from coordinator.engine.state import Awaiting, SagaState
from coordinator.errors import (
    DefinitionUnloadable,
    SagaNotFound,
    UnknownDefinition,
    UnstorableData,
)
from coordinator.logging import saga_extra
from coordinator.ports import BufferedEvent, SagaStore, WaitingSaga
from coordinator.runtime.definitions import DefinitionCatalog
from coordinator.runtime.errors import MessageRejected
from coordinator.runtime.stats import ServiceStats
from coordinator.runtime.transitions import TransitionRunner
from schemas.definition import AwaitStep

__all__ = ["AwaitedEvents", "correlation_values"]

log = logging.getLogger("coordinator.service")

Value = str | int | float

PAGE = 200
"""Sagas read per query, and buffered events per look-up."""
CONCURRENCY = 32
"""Sagas one event is delivered to at once."""
SWEEP_EVERY = timedelta(seconds=5)


def correlation_values(steps: Sequence[AwaitStep], body: dict[str, Any]) -> list[Value]:
    """The distinct values an event's body correlates by, for ``steps`` (JSON equality)."""
    values: list[Value] = []
    for step in steps:
        value = match_value(step, body)
        if value is not None and not any(same_value(value, seen) for seen in values):
            values.append(value)
    return values


def _completed(transition: Transition, message_id: str, at: datetime) -> bool:
    """Whether this transition completed a step with the event ``message_id`` at ``at``."""
    return any(
        entry.event == "event.received"
        and entry.at == at
        and entry.detail.get("message_id") == message_id
        for entry in reversed(transition.state.history[-20:])
    )


class AwaitedEvents:
    """Delivers events to the sagas waiting for them, and keeps them for those to come."""

    def __init__(
        self,
        store: SagaStore,
        *,
        definitions: DefinitionCatalog,
        runner: TransitionRunner,
        clock: Callable[[], datetime],
        new_id: Callable[[], str],
        stats: ServiceStats,
    ) -> None:
        self._store = store
        self._definitions = definitions
        self._runner = runner
        self._clock = clock
        self._new_id = new_id
        self._stats = stats
        self._swept_at: datetime | None = None
        self._missed_since: datetime | None = None
        """The earliest ``since`` of a look-up that failed here (the recovery pass's)."""
        runner.on_waiting = self.look_up

    # -- an event arrives --------------------------------------------------------------
    def awaited(self, event_type: str) -> bool:
        return bool(self._definitions.awaiting(event_type))

    async def on_event(self, event_type: str, body: dict[str, Any], message_id: str | None) -> int:
        """Keep the event, then complete the steps waiting for it; how many it completed.

        Raises ``MessageRejected`` when the event cannot be kept (MongoDB refuses its
        body) or a saga it matches cannot store it.
        """
        awaiting = self._definitions.awaiting(event_type)
        values = correlation_values([step for _, step in awaiting], body)
        if not values:
            return 0
        now = self._clock()
        message_id = message_id or f"event:{self._new_id()}"
        keep_for = max(step.awaits.buffer for _, step in awaiting)
        event = BufferedEvent(
            id=f"{event_type}:{message_id}",
            event_type=event_type,
            body=body,
            message_id=message_id,
            values=tuple(values),
            received_at=now,
            expires_at=now + keep_for,
        )
        try:
            if await self._store.buffer_event(event):
                self._stats.events_buffered += 1
        except UnstorableData as exc:
            raise MessageRejected(f"the event cannot be kept: {exc}") from exc
        problems: list[str] = []
        completed = 0
        after: str | None = None
        while True:
            page = await self._store.waiting_sagas(event_type, values, after, PAGE)
            targets = [saga.id for saga in page if await self._matches(saga, event)]
            for start in range(0, len(targets), CONCURRENCY):
                chunk = targets[start : start + CONCURRENCY]
                outcomes = await asyncio.gather(*(self._deliver(s, event) for s in chunk))
                for saga_id, outcome in zip(chunk, outcomes, strict=True):
                    if isinstance(outcome, str):
                        problems.append(f"saga {saga_id}: {outcome}")
                    completed += int(outcome is True)
            if len(page) < PAGE:
                break
            after = page[-1].id
        if problems:
            raise MessageRejected("; ".join(problems))
        return completed

    async def _matches(self, saga: WaitingSaga, event: BufferedEvent) -> bool:
        """Whether one of ``saga``'s waiting steps matches ``event`` (its own definition's
        ``match``), so that an index hit on another field's value is not delivered."""
        for entry in saga.awaiting:
            step = await self._step(saga.definition, saga.definition_version, entry)
            if step is not None and self._fits(step, entry, event, since=False):
                return True
        return False

    async def _step(self, name: str, version: int, entry: Awaiting) -> AwaitStep | None:
        try:
            definition = await self._definitions.get(name, version)
            step = definition.step(entry.step)
        except (UnknownDefinition, DefinitionUnloadable, KeyError):
            return None
        return step if isinstance(step, AwaitStep) else None

    @staticmethod
    def _fits(step: AwaitStep, entry: Awaiting, event: BufferedEvent, *, since: bool) -> bool:
        if entry.event != event.event_type or step.awaits.event != event.event_type:
            return False
        if since and event.received_at < entry.since - step.awaits.buffer:
            return False
        return same_value(match_value(step, event.body), entry.value)

    async def _deliver(self, saga_id: str, event: BufferedEvent) -> bool | str:
        """Hand ``event`` to one saga: True when it completed a step, else False, or why it
        could not be stored there."""
        try:
            _, completed = await self._apply(saga_id, event)
        except SagaNotFound:
            return False
        except UnstorableData as exc:
            log.warning("an event cannot be stored in a saga: %s", exc, extra=saga_extra(saga_id))
            return str(exc)
        if not completed:
            return False
        await self._store.event_matched(event.id)
        return True

    async def _apply(self, saga_id: str, event: BufferedEvent) -> tuple[Transition, bool]:
        """Apply ``event`` to the saga through the runner: the transition, and whether it
        completed a step with the event (then counted in ``events_matched``)."""
        times: list[datetime] = []

        def received(at: datetime) -> EventReceived:
            times.append(at)
            return EventReceived(event.event_type, event.body, at, event.message_id)

        transition = await self._runner.apply(saga_id, received)
        completed = bool(times) and _completed(transition, event.message_id, times[-1])
        if completed:
            self._stats.events_matched += 1
        return transition, completed

    # -- a step starts waiting ---------------------------------------------------------
    async def look_up(self, transition: Transition) -> None:
        """The runner's ``on_waiting``: read the buffer for each step that started waiting
        in ``transition`` (already saved) and hand in the oldest kept event that fits.

        A failure is logged and left to the recovery pass, never raised: the transition
        that made the step wait is saved and its message may be acknowledged.
        """
        try:
            await self._look_up(transition.state, transition.awaiting)
        except Exception as exc:
            earliest = min(entry.since for entry in transition.awaiting)
            if self._missed_since is None or earliest < self._missed_since:
                self._missed_since = earliest
            log.warning(
                "buffer look-up failed; the next sweep reads it again: %r",
                exc,
                extra=saga_extra(transition.state.id),
            )

    async def _look_up(self, state: SagaState, entries: Sequence[Awaiting]) -> None:
        used = {step.event_id for step in state.steps if step.event_id is not None}
        for entry in entries:
            step = await self._step(state.definition, state.definition_version, entry)
            if step is None:
                continue
            kept = await self._store.buffered_events(entry.event, entry.value, self._clock(), PAGE)
            for event in kept:
                if event.message_id in used or not self._fits(step, entry, event, since=True):
                    continue
                outcome = await self._deliver(state.id, event)
                if outcome is True:
                    used.add(event.message_id)
                    break
                if isinstance(outcome, str):
                    return  # the saga cannot store it: it keeps waiting (logged)

    # -- the sweep ---------------------------------------------------------------------
    async def sweep(self) -> None:
        """Every ``SWEEP_EVERY`` at most: count the expired kept events; read the buffer
        again for recent waits (all of them at the first sweep, a start-up; after a failed
        look-up, those since it)."""
        now = self._clock()
        if self._swept_at is not None and now - self._swept_at < SWEEP_EVERY:
            return
        first = self._swept_at is None
        self._swept_at = now
        self._stats.events_expired += await self._store.expire_events(now)
        since = self._missed_since
        if first:
            longest = self._definitions.longest_buffer()
            if longest is not None:
                since = min(since or now, now - 2 * longest)
        if since is not None:
            self._missed_since = None
            await self.recover(since)

    async def recover(self, since: datetime) -> int:
        """Read the buffer for every saga that started waiting at or after ``since``."""
        after: str | None = None
        seen = 0
        while True:
            page = await self._store.recently_waiting(since, after, PAGE)
            for saga in page:
                state = await self._store.load_saga(saga.id)
                if state is not None and state.awaiting:
                    await self._look_up(state, state.awaiting)
            seen += len(page)
            if len(page) < PAGE:
                return seen
            after = page[-1].id

    # -- REST ----------------------------------------------------------------------------
    async def deliver(
        self, saga_id: str, event_type: str, body: dict[str, Any], message_id: str | None
    ) -> Transition:
        """``POST /v1/sagas/{id}/events``: the event to this saga's step waiting for it.

        ``refused`` (409) when no step of it waits for ``event_type``, or the body's
        correlation value is not the awaited one; ``SagaNotFound`` (404) for no saga;
        ``UnstorableData`` (422) when the saga cannot store the body.
        """
        state = await self._store.load_saga(saga_id)
        if state is None:
            raise SagaNotFound(saga_id)
        entries = [entry for entry in state.awaiting if entry.event == event_type]
        if not entries:
            return Transition(
                state=state,
                changed=False,
                refused=f"no step of this saga is waiting for an event {event_type!r} "
                f"(saga {state.status})",
            )
        event = BufferedEvent(
            id="",
            event_type=event_type,
            body=body,
            message_id=message_id or f"api:{self._new_id()}",
            values=(),
            received_at=self._clock(),
            expires_at=self._clock(),
        )
        mismatch = await self._mismatch(state, entries, event)
        if mismatch is not None:
            return Transition(state=state, changed=False, refused=mismatch)
        transition, completed = await self._apply(saga_id, event)
        if not completed:
            return Transition(
                state=transition.state,
                changed=transition.changed,
                refused="the event completed no step: "
                + _last_ignored(transition.state, "the step no longer waits for it"),
            )
        return transition

    async def _mismatch(
        self, state: SagaState, entries: Sequence[Awaiting], event: BufferedEvent
    ) -> str | None:
        reasons = []
        for entry in entries:
            step = await self._step(state.definition, state.definition_version, entry)
            if step is None:
                continue
            if self._fits(step, entry, event, since=False):
                return None
            found = match_value(step, event.body)
            reasons.append(
                f"step {entry.step!r} waits for {step.awaits.match} = {entry.value!r}, "
                f"and the body gives {found!r}"
            )
        return "the body does not match the waiting step: " + "; ".join(reasons)


def _last_ignored(state: SagaState, default: str) -> str:
    for entry in reversed(state.history):
        if entry.event == "event.ignored":
            return str(entry.detail.get("reason", default))
    return default
