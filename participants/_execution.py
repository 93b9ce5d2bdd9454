"""From a decoded command to its reply body, through the idempotency record.

Theory of operation, for one command with idempotency key K:

1. No handler for the command (for its kind) → ``unknown_command``, not retryable. Not
   stored: nothing ran, and a later deployment may know the command.
1b. Past its ``x-deadline`` → not executed: the stored outcome if K has one, else
   ``deadline_exceeded``, retryable, not stored. The coordinator has stopped waiting for
   this attempt and ignores the reply (it only counts it in the saga's history), unless the
   two clocks disagree and it still waits: then the reply moves it on at once instead of at
   its timeout, and a later attempt runs the handler.
2. A final record for K → its stored reply, without calling the handler.
3. Claim K (see ``_store``), keeping its lease renewed from the moment the claim is sent
   until the outcome is stored or the claim released (``_lease.LeaseKeeper``). A duplicate
   in this process waits for the delivery ahead of it. If another process holds the claim
   — a duplicate arriving while the first copy still runs — this one *waits*, polling,
   until the record becomes final (then replies that outcome under its own headers, so the
   coordinator gets an answer for the attempt it is waiting for), is released (then claims
   and runs), or went unrenewed for its lease and half as long again, measured on the
   database's clock (its claimant died): then it takes the claim over.
4. A compensation first looks at its action's records: ``<saga>:<step>:action`` and, after
   operator retries, ``…:r<n>``. None → ``succeeded`` with an empty output, the
   compensation handler is not called (nothing to undo), and a ``failed``/``compensated``
   tombstone is stored under the action key so that a late action command is refused
   rather than leaving an effect nothing will undo. The latest in progress → retryable
   ``action_in_progress``. Otherwise the latest that was performed (succeeded, or ran with
   an ``invalid_output``) is undone, its output in ``delivery.action_output``; none
   performed (non-retryable failures) → nothing to undo.
5. Run the handler. Success or ``StepError`` → final, stored; ``RetryableError`` or any
   other exception → the claim is released, the next attempt runs the handler again. An
   output that cannot be replied or stored (``_output``) → the final, non-retryable
   failure ``invalid_output``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from participants._delivery import Command, Delivery
from participants._errors import StepError, error_for
from participants._lease import LeaseKeeper
from participants._output import (
    INVALID_OUTPUT,
    failed,
    invalid_output,
    output_problem,
    performed,
    succeeded,
)
from participants._store import Claim, OutcomeStore, Record, new_owner
from schemas.codec import Limits
from schemas.envelope import ReplyError
from schemas.storable import refused

__all__ = ["ContextLogger", "Executor", "Handler"]

#: A command handler: the command's input and delivery context in, its output out.
Handler = Callable[[dict[str, Any], Delivery], Awaitable[dict[str, Any] | None]]

logger = logging.getLogger("participants")


class ContextLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the saga id, step, kind and attempt."""

    def __init__(self, base: logging.Logger, participant: str, delivery: Delivery) -> None:
        super().__init__(
            base,
            {
                "participant": participant,
                "saga_id": delivery.saga_id,
                "step": delivery.step,
                "kind": delivery.kind,
                "attempt": delivery.attempt,
            },
        )
        self._prefix = (
            f"[{participant} saga={delivery.saga_id} step={delivery.step} "
            f"{delivery.kind} {delivery.command} attempt={delivery.attempt}] "
        )

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        """Add the prefix and the context fields."""
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return f"{self._prefix}{msg}", kwargs


class Executor:
    """Runs handlers at most once per final outcome.

    Args:
        name: The participant's name.
        poll_interval: How often a waiting duplicate looks at the record again.
        limits: The size and nesting of a reply the coordinator accepts.
    """

    def __init__(
        self, name: str, *, poll_interval: float = 0.2, limits: Limits | None = None
    ) -> None:
        self.name = name
        self._store: OutcomeStore | None = None
        self.poll_interval = poll_interval
        self.limits = limits or Limits()
        self._turns: dict[str, asyncio.Event] = {}
        self.handlers: dict[str, dict[str, Handler]] = {"action": {}, "compensation": {}}
        self.executions: Counter[str] = Counter()

    @property
    def store(self) -> OutcomeStore:
        """The idempotency records; set when the participant starts."""
        if self._store is None:
            raise RuntimeError(f"participant {self.name} is not started")
        return self._store

    @store.setter
    def store(self, store: OutcomeStore | None) -> None:
        self._store = store

    async def outcome(self, command: Command, log: ContextLogger) -> dict[str, Any] | None:
        """The reply body for ``command``, or ``None`` when another delivery replies."""
        d = command.delivery
        handler = self.handlers[d.kind].get(d.command)
        if handler is None:
            known = ", ".join(sorted(self.handlers[d.kind])) or "none"
            log.warning("unknown %s command %r (known: %s)", d.kind, d.command, known)
            message = f"{self.name} has no {d.kind} {d.command!r}; known: {known}"
            return failed(ReplyError(code="unknown_command", message=message))
        if d.deadline is not None and datetime.now(UTC) >= d.deadline:
            return await self._past_deadline(d, log)
        async with self._turn(d.idempotency_key, log):
            claim = Claim(d.idempotency_key, new_owner())
            keeper = LeaseKeeper(self.store, claim, log)  # before the claim is sent
            try:
                return await self._perform(handler, command, claim, keeper, log)
            finally:
                await keeper.stop()

    @contextlib.asynccontextmanager
    async def _turn(self, key: str, log: ContextLogger) -> AsyncIterator[None]:
        """One delivery of ``key`` at a time in this process: a duplicate waits for the
        delivery ahead of it (its claim is alive: it is never taken over from here)."""
        if key in self._turns:
            log.info("a duplicate of this command is in progress here: waiting for it")
        while (ahead := self._turns.get(key)) is not None:
            await ahead.wait()
        done = asyncio.Event()
        self._turns[key] = done
        try:
            yield
        finally:
            del self._turns[key]
            done.set()

    async def _perform(
        self,
        handler: Handler,
        command: Command,
        claim: Claim,
        keeper: LeaseKeeper,
        log: ContextLogger,
    ) -> dict[str, Any] | None:
        d = command.delivery
        replied = await self._claim(d, claim, log)
        if replied is not None:
            return replied
        keeper.held = True
        try:
            if d.kind == "compensation":
                undo = await self._nothing_to_undo(d, log)
                if isinstance(undo, tuple):
                    body, final = undo
                    return await self._settle(claim, body, final, log)
                command = dataclasses.replace(
                    command, delivery=dataclasses.replace(d, action_output=undo)
                )
            body, final = await self._run(handler, command, log)
        except BaseException:
            await asyncio.shield(self.store.release(claim))
            raise
        return await self._settle(claim, body, final, log)

    async def _past_deadline(self, d: Delivery, log: ContextLogger) -> dict[str, Any]:
        record = await self.store.get(d.idempotency_key)
        if record is not None and record.final and record.reply is not None:
            return record.reply
        assert d.deadline is not None
        log.warning("past its deadline %s: not executed", d.deadline.isoformat())
        message = f"the command arrived after its deadline {d.deadline.isoformat()}"
        return failed(ReplyError(code="deadline_exceeded", message=message, retryable=True))

    async def _claim(self, d: Delivery, claim: Claim, log: ContextLogger) -> dict[str, Any] | None:
        """Claim the key (``None``), or the stored reply another delivery left for it.

        A claim in progress elsewhere is waited for, polling, until it becomes final, is
        released (then claimed here), or went unrenewed past its lease and the margin on
        the database's clock (its claimant crashed, or lost the database that long): then
        it is taken over.
        """
        fields = {"saga_id": d.saga_id, "step": d.step, "kind": d.kind, "command": d.command}
        # Claim first: a new key (the usual case) costs one round trip, not a read too.
        if await self.store.claim(d.idempotency_key, claim.owner, attempt=d.attempt, **fields):
            return None
        waited = False
        while True:
            record = await self.store.get(d.idempotency_key)
            if record is None:  # released meanwhile
                if await self.store.claim(
                    d.idempotency_key, claim.owner, attempt=d.attempt, **fields
                ):
                    return None
                continue
            if record.final and record.reply is not None:
                log.info("repeated idempotency key: replying the stored %s", record.status)
                return record.reply
            if await self.store.expired(record):
                if await self.store.take_over(record, claim.owner):
                    log.warning("took over a claim whose lease had passed (its claimant died?)")
                    return None
                continue
            if not waited:
                log.info("a duplicate of this command is in progress: waiting for its outcome")
                waited = True
            await asyncio.sleep(self.poll_interval)

    async def _nothing_to_undo(
        self, d: Delivery, log: ContextLogger
    ) -> tuple[dict[str, Any], bool] | dict[str, Any]:
        """The reply when there is nothing to undo, else the action's recorded output.

        The action may have had several keys (operator retries, ``…:r<n>``): the latest
        one decides. In progress → ``action_in_progress``; else the latest that was
        performed is undone; none performed → nothing to undo.
        """
        records: list[Record] = []
        for _ in range(3):
            records = await self.store.action_records(d.saga_id, d.step)
            if records:
                break
            tombstone = failed(
                ReplyError(
                    code="compensated",
                    message="the compensation arrived before the action; not performed",
                )
            )
            fields = {"saga_id": d.saga_id, "step": d.step, "kind": "action"}
            if await self.store.tombstone(d.action_key, tombstone, **fields):
                log.info("the action was never performed: nothing to undo")
                return succeeded(), True
        busy = [record for record in records if not record.final]
        if records and records[-1].final:
            done = [record for record in records if performed(record.reply)]
            if done:
                output = (done[-1].reply or {}).get("output")
                return dict(output) if isinstance(output, dict) else {}
            if not busy:
                log.info("the action failed: nothing to undo")
                return succeeded(), True
        key = busy[-1].key if busy else d.action_key
        log.info("the action is still in progress: asking for a retry")
        error = ReplyError(
            code="action_in_progress", message=f"action {key} is still in progress", retryable=True
        )
        return failed(error), False

    async def _run(
        self, handler: Handler, command: Command, log: ContextLogger
    ) -> tuple[dict[str, Any], bool]:
        d = command.delivery
        self.executions[d.idempotency_key] += 1
        try:
            output = await handler(dict(command.input), d)
        except Exception as exc:
            error = error_for(exc)
            if isinstance(exc, StepError):
                log.info("failed: %s (retryable=%s)", error.code, error.retryable)
            else:
                log.exception("the handler raised %s (retryable)", error.code)
            return failed(error), not error.retryable
        problem = output_problem(output, self.limits)
        if problem is not None:
            log.error("succeeded, but its output is refused (%s): %s", INVALID_OUTPUT, problem)
            return invalid_output(problem), True
        log.info("succeeded")
        return succeeded(output), True

    async def _settle(
        self, claim: Claim, body: dict[str, Any], final: bool, log: ContextLogger
    ) -> dict[str, Any] | None:
        if not final:
            await self.store.release(claim)
            return body
        try:
            stored = await self.store.finish(claim, body["status"], body)
        except Exception as exc:
            if body["status"] != "succeeded" or not refused(exc):
                raise
            log.error("succeeded, but MongoDB refuses its output (%s): %s", INVALID_OUTPUT, exc)
            body = invalid_output(f"MongoDB refuses it: {exc}")
            stored = await self.store.finish(claim, "failed", body)
        if stored:
            return body
        record = await self.store.get(claim.key)
        if record is not None and record.final and record.reply is not None:
            log.warning("lost the claim to another delivery: replying its outcome")
            return record.reply
        log.warning("lost the claim to another delivery, which will reply")
        return None
