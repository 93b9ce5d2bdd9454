"""The saga engine: pure functions from (definition, state, input) to a transition.

Nothing in this package performs I/O, reads a clock or draws random numbers of its own;
ruff's banned-api rule keeps asyncio, aio_pika, pymongo and fastapi out of it.

    transition = start(definition, SagaStarted(...), random=rng.random)
    transition = handle(definition, transition.state, ReplyReceived(...), random=rng.random)

The rules, with their table, are in ``transitions.py``.
"""

from .engine import Options, handle, start
from .flow import match_value
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
from .state import Awaiting, Command, ErrorInfo, HistoryEntry, Phase, SagaState, StepState

__all__ = [
    "Awaiting",
    "CancelRequested",
    "Command",
    "ErrorInfo",
    "EventReceived",
    "HistoryEntry",
    "Input",
    "Options",
    "Phase",
    "ReplyReceived",
    "RetryRequested",
    "SagaStarted",
    "SagaState",
    "StepState",
    "TimerFired",
    "Transition",
    "TriggerRepeated",
    "handle",
    "match_value",
    "start",
]
