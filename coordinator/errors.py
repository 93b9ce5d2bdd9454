"""The coordinator's errors, rooted at one class.

    SagaError
    ├── DefinitionError          a definition is invalid (every error located)
    │   └── DefinitionConflict   (name, version) already registered with other content
    ├── UnknownDefinition        no definition of that name (and version) is registered
    ├── DefinitionUnloadable     a stored definition no longer passes validation
    ├── SagaNotFound             no saga instance has that id
    ├── InputRejected            a message's content cannot be applied (``reason``)
    ├── EngineError
    │   └── InvalidTransition    our bug: the engine was called with inputs it cannot take
    └── AdapterError
        ├── StoreUnavailable     MongoDB did not answer; the operation may be retried
        ├── UnstorableData       MongoDB can never store this data (too large, a key it
        │                        rejects, an integer over 8 bytes…); never retried
        └── BrokerUnavailable    RabbitMQ did not answer; the operation may be retried

Driver exceptions (pymongo, aio-pika) never travel above ``coordinator/adapters``: the
adapters re-raise them as ``AdapterError`` subclasses, chained with ``from``.

Handling a message (``schemas.consuming``, shared with the participant SDK) sorts what
happened into three outcomes:

* the input is bad — ``schemas.codec.BadMessage`` from the codec, ``InputRejected`` from a
  handler: dead-lettered with the reason in ``x-saga-rejection``, never redelivered;
* a dependency is unavailable — ``AdapterError`` (and contention, ``SagaBusy``): the
  message is held and retried with backoff until it goes through;
* anything else is a bug: logged with its traceback, counted in ``/metrics``
  (``saga_message_failures_total``), tried ``max_deliveries`` times in all, then
  dead-lettered with the error.
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "BrokerUnavailable",
    "DefinitionConflict",
    "DefinitionError",
    "DefinitionUnloadable",
    "EngineError",
    "InputRejected",
    "InvalidTransition",
    "SagaError",
    "SagaNotFound",
    "StoreUnavailable",
    "UnknownDefinition",
    "UnstorableData",
]


class SagaError(Exception):
    """Root of every error the coordinator raises on purpose."""


class DefinitionError(SagaError):
    """A definition failed validation; ``errors`` holds one located message per problem.

    The loader in ``coordinator.definitions`` fills ``errors`` with objects whose ``str()``
    is ``file:line: field: message``.
    """

    def __init__(self, errors: list[object]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(error) for error in errors))


class DefinitionConflict(SagaError):
    def __init__(self, name: str, version: int) -> None:
        self.name = name
        self.version = version
        super().__init__(
            f"definition {name!r} version {version} is already registered with other "
            f"content; (name, version) is immutable: register it as version {version + 1}"
        )


class UnknownDefinition(SagaError):
    def __init__(self, name: str, version: int | None = None) -> None:
        self.name = name
        self.version = version
        which = f"{name!r}" if version is None else f"{name!r} version {version}"
        super().__init__(f"no definition {which} is registered")


class DefinitionUnloadable(SagaError):
    """A stored definition fails to load (say, a rule added after it was registered)."""

    def __init__(self, name: str, version: int, problem: str) -> None:
        self.name = name
        self.version = version
        super().__init__(
            f"the stored definition {name!r} version {version} does not load: {problem}; "
            f"register a corrected version {version + 1}"
        )


class SagaNotFound(SagaError):
    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(f"no saga with id {saga_id!r}")


class InputRejected(SagaError):
    """A message (or request) that cannot be applied: rejected with ``reason``, not retried."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class EngineError(SagaError):
    pass


class InvalidTransition(EngineError):
    pass


class AdapterError(SagaError):
    pass


class StoreUnavailable(AdapterError):
    pass


class UnstorableData(AdapterError):
    """The data cannot be stored, now or ever: retrying is pointless; reject it instead."""


class BrokerUnavailable(AdapterError):
    pass
