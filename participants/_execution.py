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
3. Claim K (see ``_store``). If another delivery holds a live claim on K — a duplicate
   arriving while the first copy still runs — this one *waits*, polling, until the record
   becomes final (then replies that outcome under its own headers, so the coordinator gets
   an answer for the attempt it is waiting for), is released (then claims and runs), or
   its lease passes (then takes over).
4. A compensation first looks at its action's record, key ``<saga>:<step>:action``:
   none, or a non-retryable failure → ``succeeded`` with an empty output, the compensation
   handler is not called (nothing to undo). When there was no record at all, a
   ``failed``/``compensated`` tombstone is stored under the action key so that a late
   action command is refused rather than leaving an effect nothing will undo. An action in
   progress → retryable ``action_in_progress``.
5. Run the handler, renewing the lease meanwhile. Success or ``StepError`` → final,
   stored; ``RetryableError`` or any other exception → the claim is released, the next
   attempt runs the handler again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from participants._delivery import Command, Delivery
from participants._errors import StepError, error_for
from participants._store import Claim, OutcomeStore
from schemas.envelope import ReplyError

__all__ = ["ContextLogger", "Executor", "Handler", "failed", "succeeded"]

#: A command handler: the command's input and delivery context in, its output out.
Handler = Callable[[dict[str, Any], Delivery], Awaitable[dict[str, Any] | None]]

logger = logging.getLogger("participants")


def succeeded(output: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``succeeded`` reply body."""
    return {"status": "succeeded", "output": output or {}}


def failed(error: ReplyError) -> dict[str, Any]:
    """A ``failed`` reply body."""
    return {"status": "failed", "error": error.model_dump()}


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
    """

    def __init__(self, name: str, *, poll_interval: float = 0.2) -> None:
        self.name = name
        self._store: OutcomeStore | None = None
        self.poll_interval = poll_interval
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
        claim = await self._claim(d, log)
        if isinstance(claim, dict):
            return claim
        try:
            if d.kind == "compensation":
                undo = await self._nothing_to_undo(d, log)
                if isinstance(undo, tuple):
                    body, final = undo
                    return await self._settle(claim, body, final, log)
                command = dataclasses.replace(
                    command, delivery=dataclasses.replace(d, action_output=undo)
                )
            body, final = await self._run(handler, command, claim, log)
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

    async def _claim(self, d: Delivery, log: ContextLogger) -> Claim | dict[str, Any]:
        fields = {"saga_id": d.saga_id, "step": d.step, "kind": d.kind, "command": d.command}
        waited = False
        while True:
            # Claim first: a new key (the usual case) costs one round trip, not a read too.
            claim = await self.store.claim(d.idempotency_key, attempt=d.attempt, **fields)
            if claim is not None:
                return claim
            record = await self.store.get(d.idempotency_key)
            if record is not None and record.final and record.reply is not None:
                log.info("repeated idempotency key: replying the stored %s", record.status)
                return record.reply
            if not waited:
                log.info("a duplicate of this command is in progress: waiting for its outcome")
                waited = True
            await asyncio.sleep(self.poll_interval)

    async def _nothing_to_undo(
        self, d: Delivery, log: ContextLogger
    ) -> tuple[dict[str, Any], bool] | dict[str, Any]:
        """The reply when there is nothing to undo, else the action's recorded output."""
        for _ in range(3):
            action = await self.store.get(d.action_key)
            if action is None:
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
                continue
            if action.status == "succeeded":
                reply = action.reply or {}
                output = reply.get("output")
                return dict(output) if isinstance(output, dict) else {}
            if action.status == "failed":
                log.info("the action failed: nothing to undo")
                return succeeded(), True
            break
        log.info("the action is still in progress: asking for a retry")
        error = ReplyError(
            code="action_in_progress",
            message=f"action {d.action_key} is still in progress",
            retryable=True,
        )
        return failed(error), False

    async def _run(
        self, handler: Handler, command: Command, claim: Claim, log: ContextLogger
    ) -> tuple[dict[str, Any], bool]:
        d = command.delivery
        self.executions[d.idempotency_key] += 1
        renewer = asyncio.create_task(self._renew(claim, log))
        try:
            output = await handler(dict(command.input), d)
            if output is None:
                output = {}
            if not isinstance(output, dict):
                raise TypeError(f"the handler returned {type(output).__name__}, not a dict")
            json.dumps(output)
        except Exception as exc:
            error = error_for(exc)
            if isinstance(exc, StepError):
                log.info("failed: %s (retryable=%s)", error.code, error.retryable)
            else:
                log.exception("the handler raised %s (retryable)", error.code)
            return failed(error), not error.retryable
        finally:
            renewer.cancel()
        log.info("succeeded")
        return succeeded(output), True

    async def _renew(self, claim: Claim, log: ContextLogger) -> None:
        period = max(self.store.lease.total_seconds() / 3, 0.05)
        while True:
            await asyncio.sleep(period)
            try:
                if not await self.store.renew(claim):
                    log.warning("the claim on this key was lost (lease passed)")
                    return
            except Exception:
                log.exception("could not renew the claim")

    async def _settle(
        self, claim: Claim, body: dict[str, Any], final: bool, log: ContextLogger
    ) -> dict[str, Any] | None:
        if not final:
            await self.store.release(claim)
            return body
        if await self.store.finish(claim, body["status"], body):
            return body
        record = await self.store.get(claim.key)
        if record is not None and record.final and record.reply is not None:
            log.warning("lost the claim to another delivery: replying its outcome")
            return record.reply
        log.warning("lost the claim to another delivery, which will reply")
        return None
