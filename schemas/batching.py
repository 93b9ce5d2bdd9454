"""Group commit: many concurrent small writes become a few round trips.

Callers ``submit`` one item each and wait for its own result. The first item starts a
flush at once (no added latency when the service is quiet); items submitted while a flush
is in flight wait for it and leave together in the next one, up to ``max_batch`` items.
So under load a batch holds about as many items as arrived during one round trip, and a
quiet service still writes each item as soon as it comes.

The flush function gets the batch and returns one outcome per item, in order: a value,
or an exception that only that item's caller sees. An exception raised by the flush
itself fails every item of the batch.

The coordinator's saga store and the participant SDK's idempotency records both write
through it, and both fall back on ``one_by_one`` when a batch fails as a whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit", "one_by_one"]

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]
Outcomes = list[bool | BaseException]


class GroupCommit(Generic[T, R]):
    """Batch concurrent ``submit`` calls into calls of ``flush`` (at most ``max_in_flight``)."""

    def __init__(self, flush: Flush[T, R], *, max_batch: int = 256, max_in_flight: int = 1):
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._flush = flush
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self.batches = 0
        """Flushes run so far (for tests and figures)."""

    async def submit(self, item: T) -> R:
        """Write ``item`` with the next batch; its outcome, or its exception raised here."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._start_flushes()
        return await future

    async def drain(self) -> None:
        """Wait until every item submitted so far has been flushed."""
        while self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)

    def _start_flushes(self) -> None:
        while self._pending and len(self._flushing) < self._max_in_flight:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._flushing.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._flushing.discard(task)
        self._start_flushes()

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.batches += 1
        try:
            outcomes = await self._flush([item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"flush gave {len(outcomes)} outcomes for {len(batch)} items")
        except BaseException as exc:  # every caller of the batch sees the failure
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


async def one_by_one(
    batch: Sequence[T],
    write: Callable[[Sequence[T]], Awaitable[Outcomes]],
    settle: Callable[[Sequence[T], list[int], Outcomes], Awaitable[None]],
    *,
    errors: type[Exception] | tuple[type[Exception], ...] = Exception,
) -> Outcomes:
    """After a batch failed as a whole: ``write`` each item alone, so only a faulty one fails
    (its exception, if one of ``errors``, is its outcome).

    Part of the batch may have landed before the failure, so an item whose write now does
    not land (False) may have landed then: ``settle(batch, indexes, outcomes)`` sets the
    outcomes of those items from what is stored.
    """
    outcomes: Outcomes = []
    for item in batch:
        try:
            outcomes.extend(await write([item]))
        except errors as exc:
            outcomes.append(exc)
    lost = [index for index, outcome in enumerate(outcomes) if outcome is False]
    if lost:
        await settle(batch, lost, outcomes)
    return outcomes
