"""The engine's two entry points: ``start`` a saga, ``handle`` one input.

Both are pure: the time is the input's ``at``, randomness is the caller's ``random()``,
and the result is a ``Transition`` holding a new state and the commands to publish. The
caller's state is never mutated. Misuse (a state of another definition, wrong types) raises
``InvalidTransition``; anything a participant or an operator can send is folded into the
state or recorded in its history, never raised.

The rules themselves are in ``transitions.py``; this module checks the call, works on a
copy, and stamps every changed state: ``revision`` + 1, ``updated_at``, ``wake_at``, and the
history trimmed to ``Options.history_limit`` (the count of dropped entries is kept in
``SagaState.history_dropped``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from coordinator.errors import InvalidTransition
from schemas.definition import SagaDefinition

from . import transitions
from .messages import (
    CancelRequested,
    EventReceived,
    Input,
    ReplyReceived,
    RetryRequested,
    SagaStarted,
    TimerFired,
    Transition,
    TriggerRepeated,
)
from .run import Run, utc
from .state import SagaState, StepState

__all__ = ["Options", "handle", "start"]

_INPUTS = (
    ReplyReceived,
    TimerFired,
    CancelRequested,
    RetryRequested,
    TriggerRepeated,
    EventReceived,
)


@dataclass(frozen=True, slots=True)
class Options:
    """How the engine stamps what it emits and keeps."""

    reply_to: str = "coordinator"
    """The ``reply_to`` of every command: the replies exchange's routing key."""
    history_limit: int = 1000
    """Entries kept in ``SagaState.history``; older ones are dropped and counted."""


_DEFAULT_OPTIONS = Options()


def start(
    definition: SagaDefinition,
    started: SagaStarted,
    *,
    options: Options = _DEFAULT_OPTIONS,
    random: Callable[[], float],
) -> Transition:
    """A new saga instance of ``definition``, with attempt 1 of its first step sent.

    Args:
        definition: the saga definition the instance runs.
        started: the id, key, input and time chosen by the adapter.
        options: ``reply_to`` and the history limit.
        random: returns a float in [0, 1); used for backoff jitter.

    Returns:
        The transition: state with ``revision`` 1 and the first command (or, if the first
        step's input cannot be resolved, a saga already failed over to compensation).

    Raises:
        InvalidTransition: wrong argument types.
    """
    _check_common(definition, options, random)
    if not isinstance(started, SagaStarted):
        raise InvalidTransition(f"start() takes a SagaStarted, not {type(started).__name__}")
    at = _time(started.at)
    state = SagaState(
        id=started.saga_id,
        definition=definition.name,
        definition_version=definition.version,
        key=started.key,
        input=started.input,
        status="running",
        steps=[StepState(name=leaf.step.name) for leaf in definition.leaves],
        created_at=at,
        updated_at=at,
        deadline=at + definition.timeout if definition.timeout is not None else None,
        traceparent=started.traceparent,
        revision=0,
    )
    run = Run(definition, state, at, options.reply_to, random)
    transitions.started(run, started)
    return _finish(run, options, refused=None)


def handle(
    definition: SagaDefinition,
    state: SagaState,
    message: Input,
    *,
    options: Options = _DEFAULT_OPTIONS,
    random: Callable[[], float],
) -> Transition:
    """Fold one input into a saga: see the table in ``transitions.py``.

    Args:
        definition: the definition (name and version) the saga was started with.
        state: the stored instance; it is not modified.
        message: a reply, a timer, a cancel or retry request, or a repeated trigger.
        options: ``reply_to`` and the history limit.
        random: returns a float in [0, 1); used for backoff jitter.

    Returns:
        The transition. ``changed`` is false (and ``state`` the one given) when a timer
        found nothing due; ``refused`` says why a cancel or retry cannot apply.

    Raises:
        InvalidTransition: the state belongs to another definition or version, or an
            argument has the wrong type. Never for what a participant or operator sends.
    """
    _check_common(definition, options, random)
    _check_state(definition, state)
    if not isinstance(message, _INPUTS):
        names = ", ".join(kind.__name__ for kind in _INPUTS)
        raise InvalidTransition(f"handle() takes one of {names}, not {type(message).__name__}")
    at = _time(message.at)
    run = Run(definition, _working_copy(state), at, options.reply_to, random)
    changed, refused = transitions.apply(run, message)
    if not changed:
        return Transition(state=state, commands=[], refused=None, changed=False)
    return _finish(run, options, refused=refused)


def _working_copy(state: SagaState) -> SagaState:
    """A copy of ``state`` that the transitions may change without touching ``state``.

    Not a deep copy, which costs more than the rest of a transition once the history has
    grown: the transitions assign the fields of the state, its steps and their phases, and
    append to (or trim) the history and the outbox, but never change an entry, an output,
    an error or the input in place. So those containers are copied, and what they hold is
    shared.
    """
    steps = [
        step.model_copy(
            update={
                "action": step.action.model_copy(),
                "compensation": step.compensation.model_copy(),
            }
        )
        for step in state.steps
    ]
    return state.model_copy(
        update={"steps": steps, "history": list(state.history), "outbox": list(state.outbox)}
    )


def _finish(run: Run, options: Options, *, refused: str | None) -> Transition:
    state = run.state
    state.revision += 1
    state.updated_at = run.at
    state.wake_at = transitions.wake_at(run)
    excess = len(state.history) - options.history_limit
    if excess > 0:
        del state.history[:excess]
        state.history_dropped += excess
    awaiting = [entry for entry in state.awaiting if entry.step in run.awaits]
    return Transition(
        state=state,
        commands=list(run.commands),
        refused=refused,
        changed=True,
        awaiting=awaiting,
    )


def _time(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidTransition(f"an input's 'at' must be a datetime, not {type(value).__name__}")
    return utc(value)


def _check_common(definition: object, options: object, random: object) -> None:
    if not isinstance(definition, SagaDefinition):
        raise InvalidTransition(
            f"definition must be a SagaDefinition, not {type(definition).__name__}"
        )
    if not isinstance(options, Options):
        raise InvalidTransition(f"options must be an engine Options, not {type(options).__name__}")
    if options.history_limit < 1:
        raise InvalidTransition(f"Options.history_limit must be >= 1, not {options.history_limit}")
    if not callable(random):
        raise InvalidTransition("random must be a function returning a float in [0, 1)")


def _check_state(definition: SagaDefinition, state: object) -> None:
    if not isinstance(state, SagaState):
        raise InvalidTransition(f"state must be a SagaState, not {type(state).__name__}")
    if (state.definition, state.definition_version) != (definition.name, definition.version):
        raise InvalidTransition(
            f"saga {state.id!r} runs definition {state.definition!r} version "
            f"{state.definition_version}, not {definition.name!r} version {definition.version}: "
            "load the definition version the saga was started with"
        )
    names = [step.name for step in state.steps]
    expected = [leaf.step.name for leaf in definition.leaves]
    if names != expected:
        raise InvalidTransition(
            f"saga {state.id!r} has steps {names}, but definition {definition.name!r} version "
            f"{definition.version} has {expected}: the instance does not match its definition"
        )
