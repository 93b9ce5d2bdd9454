"""A conversation with the engine: feed inputs, get back exactly what it emitted.

``Conversation`` keeps the saga's state and a clock of its own, and checks on every call
what must hold for any transition: the given state is not mutated, a changed transition
raises the revision by one and stamps ``updated_at``, an unchanged one returns the state
as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from coordinator.engine import (
    CancelRequested,
    Command,
    EventReceived,
    Input,
    Options,
    ReplyReceived,
    RetryRequested,
    SagaStarted,
    SagaState,
    TimerFired,
    Transition,
    TriggerRepeated,
    handle,
    start,
)
from schemas.definition import SagaDefinition
from schemas.envelope import FailedReply, Kind, ReplyError, SucceededReply

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

ORDER: dict[str, Any] = {
    "name": "order-fulfillment",
    "version": 1,
    "timeout": "10m",
    "defaults": {
        "timeout": "30s",
        "retry": {"max_attempts": 3, "backoff": "1s", "multiplier": 2.0, "max_backoff": "1m"},
    },
    "steps": [
        {
            "name": "reserve-stock",
            "participant": "inventory",
            "command": "reserve_stock",
            "input": {"order_id": "${input.order_id}", "items": "${input.items}"},
            "compensation": {
                "command": "release_stock",
                "input": {"reservation_id": "${steps.reserve-stock.output.reservation_id}"},
                "retry": {"max_attempts": 2, "backoff": "2s", "multiplier": 2.0},
            },
        },
        {
            "name": "notify",
            "participant": "mailer",
            "command": "send_mail",
            "input": {"order_id": "${input.order_id}", "key": "${saga.key}"},
        },
        {
            "name": "charge-payment",
            "participant": "payments",
            "command": "charge",
            "input": {"order_id": "${input.order_id}", "amount": "${input.total}"},
            "compensation": {"command": "refund", "input": {"order_id": "${input.order_id}"}},
        },
        {
            "name": "ship-order",
            "participant": "shipping",
            "command": "create_shipment",
            "pivot": True,
            "input": {"order_id": "${input.order_id}"},
        },
        {
            "name": "invoice",
            "participant": "billing",
            "command": "send_invoice",
            "input": {"order_id": "${input.order_id}"},
        },
    ],
}
ORDER_INPUT: dict[str, Any] = {"order_id": "o-1", "items": [{"sku": "a", "qty": 2}], "total": 42}


def definition(data: dict[str, Any] | None = None, **overrides: Any) -> SagaDefinition:
    return SagaDefinition.model_validate({**(data or ORDER), **overrides})


def linear(*names: str, saga_timeout: str | None = None, **step_extra: Any) -> SagaDefinition:
    """A definition of steps ``names``, each with a compensation ``undo_<name>``.

    ``step_extra`` goes into every step (``retry``, ``timeout``, ``input``…).
    """
    steps = [
        {
            "name": name,
            "participant": "p",
            "command": f"do_{name.replace('-', '_')}",
            "compensation": {"command": f"undo_{name.replace('-', '_')}"},
            **step_extra,
        }
        for name in names
    ]
    data: dict[str, Any] = {"name": "linear", "version": 1, "steps": steps}
    if saga_timeout is not None:
        data["timeout"] = saga_timeout
    return SagaDefinition.model_validate(data)


def sent(commands: list[Command]) -> list[tuple[str, str, int]]:
    """Commands as (kind, step, attempt) triples: what a conversation asserts on."""
    return [
        (
            str(c.headers["x-saga-kind"]),
            str(c.headers["x-saga-step"]),
            int(c.headers["x-saga-attempt"]),
        )
        for c in commands
    ]


class Conversation:
    """One saga driven through the engine, step by step, with its own clock."""

    def __init__(
        self,
        saga: SagaDefinition,
        *,
        random: float | Callable[[], float] = 0.5,
        options: Options | None = None,
        saga_id: str = "s-1",
    ) -> None:
        self.definition = saga
        self.now = T0
        self.random: Callable[[], float] = random if callable(random) else (lambda: random)
        self.options = options or Options()
        self.saga_id = saga_id
        self._state: SagaState | None = None
        self.last: Transition | None = None

    @property
    def state(self) -> SagaState:
        assert self._state is not None, "start the conversation first"
        return self._state

    @property
    def status(self) -> str:
        return self.state.status

    def step(self, name: str) -> str:
        return self.state.step(name).status

    def statuses(self) -> dict[str, str]:
        return {step.name: step.status for step in self.state.steps}

    def events(self) -> list[str]:
        return [entry.event for entry in self.state.history]

    # -- inputs ----------------------------------------------------------------------

    def start(
        self, input: Any = None, *, key: str | None = "k-1", traceparent: str | None = None
    ) -> list[tuple[str, str, int]]:
        transition = start(
            self.definition,
            SagaStarted(
                saga_id=self.saga_id,
                key=key,
                input=ORDER_INPUT if input is None else input,
                at=self.now,
                source="event:order.placed",
                message_id="m-0",
                traceparent=traceparent,
            ),
            options=self.options,
            random=self.random,
        )
        assert transition.changed and transition.state.revision == 1
        self._state, self.last = transition.state, transition
        return sent(transition.commands)

    def feed(self, message: Input) -> Transition:
        """Hand one input to the engine and check the invariants of every transition."""
        before = self.state
        snapshot = before.model_dump()
        transition = handle(
            self.definition, before, message, options=self.options, random=self.random
        )
        assert before.model_dump() == snapshot, "the engine mutated its input state"
        if transition.changed:
            assert transition.state.revision == before.revision + 1
            assert transition.state.updated_at == message.at
            assert transition.state is not before
            assert transition.state.outbox[len(before.outbox) :] == transition.commands
        else:
            assert transition.state is before and not transition.commands
        self._state, self.last = transition.state, transition
        return transition

    def reply(
        self,
        step: str,
        body: SucceededReply | FailedReply,
        *,
        kind: Kind = "action",
        attempt: int | None = None,
    ) -> list[tuple[str, str, int]]:
        if attempt is None:
            phase = self.state.step(step)
            attempt = (phase.action if kind == "action" else phase.compensation).attempt
        message = ReplyReceived(
            step=step, kind=kind, attempt=attempt, reply=body, at=self.now, message_id="r"
        )
        return sent(self.feed(message).commands)

    def succeed(
        self,
        step: str,
        output: dict[str, Any] | None = None,
        *,
        kind: Kind = "action",
        attempt: int | None = None,
    ) -> list[tuple[str, str, int]]:
        body = SucceededReply(status="succeeded", output=output or {})
        return self.reply(step, body, kind=kind, attempt=attempt)

    def fail(
        self,
        step: str,
        code: str = "boom",
        *,
        retryable: bool = False,
        kind: Kind = "action",
        attempt: int | None = None,
    ) -> list[tuple[str, str, int]]:
        body = FailedReply(
            status="failed", error=ReplyError(code=code, message=f"{code}!", retryable=retryable)
        )
        return self.reply(step, body, kind=kind, attempt=attempt)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def fire(self, at: datetime | None = None) -> list[tuple[str, str, int]]:
        """A timer at ``at``, by default at the state's ``wake_at`` (the clock moves there)."""
        when = at or self.state.wake_at
        assert when is not None, "no timer is pending"
        self.now = max(self.now, when)
        return sent(self.feed(TimerFired(at=self.now)).commands)

    def tick(self) -> Transition:
        """A timer at the conversation's current time."""
        return self.feed(TimerFired(at=self.now))

    def cancel(self, reason: str = "customer asked") -> Transition:
        return self.feed(CancelRequested(reason=reason, at=self.now))

    def retry(self) -> Transition:
        return self.feed(RetryRequested(at=self.now))

    def event(
        self, event_type: str, body: dict[str, Any], message_id: str | None = "e-1"
    ) -> list[tuple[str, str, int]]:
        message = EventReceived(
            event_type=event_type, body=body, at=self.now, message_id=message_id
        )
        return sent(self.feed(message).commands)

    def trigger_repeated(self) -> Transition:
        return self.feed(TriggerRepeated(at=self.now, source="event:order.placed"))


def command(name: str, *, undo: bool = True, **extra: Any) -> dict[str, Any]:
    """A command step ``name`` of participant ``p`` (``do_<name>``, undone by ``undo_<name>``)."""
    word = name.replace("-", "_")
    step: dict[str, Any] = {"name": name, "participant": "p", "command": f"do_{word}", **extra}
    if undo:
        step["compensation"] = {"command": f"undo_{word}"}
    return step


def waits(name: str, event: str = "paid", **extra: Any) -> dict[str, Any]:
    """An await step ``name`` for ``event`` whose ``order_id`` equals the input's."""
    spec = {"event": event, "match": "${event.order_id}", "equals": "${input.order_id}"}
    return {"name": name, "await": spec, **extra}


def group(name: str, when: str | None = None, **branches: list[dict[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name, "parallel": branches}
    if when is not None:
        found["when"] = when
    return found


def saga_of(*steps: dict[str, Any], **extra: Any) -> SagaDefinition:
    return SagaDefinition.model_validate({"name": "s", "version": 1, "steps": list(steps), **extra})
