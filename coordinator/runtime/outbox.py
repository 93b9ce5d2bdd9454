"""The outbox: publishing a transition's commands, clearing them once confirmed, and the
relay that sends again what a crash left behind.

A transition's commands are saved in the instance's ``outbox`` with the state; they are
published only after that save, waiting for the broker's confirms. The published
``(saga id, message id)`` pairs are queued here; a background task removes them from the
outboxes in one round trip per batch (``clear_outbox``), not one per transition. The
saga's next save drops them from the stored outbox anyway (``without_published``), so that
save takes them off the queue: only a saga's last commands, or those of a saga that waits,
cost a clear.

A crash between the save and the publish leaves the commands in the outbox;
``relay_unpublished`` sends every entry older than ``relay_age`` again (at least once; the
idempotency key makes a resend harmless).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from coordinator.engine.state import Command, SagaState
from coordinator.errors import AdapterError
from coordinator.ports import Publisher, SagaStore
from coordinator.runtime.stats import ServiceStats
from schemas.envelope import HEADER_ATTEMPT, HEADER_KIND, HEADER_SAGA_ID, HEADER_STEP

__all__ = ["Delivered", "Outbox"]

log = logging.getLogger("coordinator.service")

Delivered = tuple[str, str, int]
"""The (step, kind, attempt) a reply answers: proof that its command was delivered."""

_RECENT_LIMIT = 100_000


class Outbox:
    """Publishes commands after their save, clears them in batches, relays the left-overs."""

    def __init__(
        self,
        store: SagaStore,
        publisher: Publisher,
        *,
        clock: Callable[[], datetime],
        stats: ServiceStats,
        relay_age: timedelta,
        batch: int,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._clock = clock
        self._stats = stats
        self._relay_age = relay_age
        self._batch = batch
        self._to_clear: dict[str, list[str]] = {}
        self._queued_at: dict[str, datetime] = {}
        self._wakeup = asyncio.Event()
        self._recently_published: dict[str, None] = {}

    # -- publishing ---------------------------------------------------------------------
    async def publish(self, commands: Sequence[Command], *, raise_errors: bool = False) -> None:
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
        self._stats.published += len(commands)
        self._queue_clear(commands)

    def without_published(self, state: SagaState, delivered: Delivered | None) -> SagaState:
        """``state`` without the outbox entries known to be published.

        Known: confirmed by the broker to this process (the clear may still be queued), or
        answered — a reply for (step, kind, attempt) proves its command was delivered.
        Without this, a transition that read the instance just before another replica's
        clear would write the cleared entries back, and the relay would send them again.
        """
        kept = [c for c in state.outbox if not self._known_published(c, delivered)]
        if len(kept) == len(state.outbox):
            return state
        return state.model_copy(update={"outbox": kept})

    def _known_published(self, command: Command, delivered: Delivered | None) -> bool:
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

    # -- clearing -----------------------------------------------------------------------
    def _queue_clear(self, commands: Iterable[Command]) -> None:
        now = self._clock()
        for command in commands:
            saga_id = str(command.headers.get(HEADER_SAGA_ID, ""))
            self._to_clear.setdefault(saga_id, []).append(command.message_id)
            self._queued_at.setdefault(saga_id, now)
            self._recently_published[command.message_id] = None
        while len(self._recently_published) > _RECENT_LIMIT:
            del self._recently_published[next(iter(self._recently_published))]
        self._wakeup.set()

    def saved(self, state: SagaState) -> None:
        """Unqueue the clears ``state`` made moot: its save wrote the outbox without them."""
        queued = self._to_clear.get(state.id)
        if queued is None:
            return
        still = {command.message_id for command in state.outbox}
        kept = [message_id for message_id in queued if message_id in still]
        if kept:
            self._to_clear[state.id] = kept
        else:
            del self._to_clear[state.id]
            del self._queued_at[state.id]

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

    async def flush(self, queued_before: datetime | None = None) -> int:
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
            self._stats.outbox_cleared += len(batch)
            self._stats.outbox_flushes += 1
        return cleared

    async def run_clearer(self, retry_delay: float = 1.0, linger: float = 1.0) -> None:
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
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queued_at:
                due = next(iter(self._queued_at.values())) + timedelta(seconds=linger)
                wait = (due - self._clock()).total_seconds()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue  # the oldest entry may have been taken off meanwhile
                try:
                    await self.flush(queued_before=self._clock() - timedelta(seconds=linger))
                except AdapterError as exc:
                    log.warning("clearing published outbox entries failed: %s", exc)
                    await asyncio.sleep(retry_delay)

    # -- the relay ----------------------------------------------------------------------
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
            await self.publish(pending, raise_errors=True)
            self._stats.relayed += len(pending)
            log.info("relayed %d unpublished commands", len(pending))
        return len(pending)
