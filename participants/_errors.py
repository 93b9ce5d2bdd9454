"""Errors a handler raises, and their one mapping to the reply's ``error`` object.

``StepError`` is a business refusal (retrying cannot help); ``RetryableError`` asks the
coordinator to try again. Any other exception is treated as retryable and reported under
its type name, on the theory that an unexpected crash is more often transient than not.
"""

from __future__ import annotations

from schemas.envelope import ReplyError

__all__ = ["RetryableError", "StepError", "error_for"]

_MAX_MESSAGE = 10_000


class StepError(Exception):
    """A non-retryable failure: the coordinator fails the step and compensates.

    Args:
        code: A short machine-readable reason, e.g. ``card_declined``.
        message: A human-readable explanation.
    """

    retryable: bool = False

    def __init__(self, code: str, message: str = "") -> None:
        if not code:
            raise ValueError("an error code must not be empty")
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class RetryableError(StepError):
    """A transient failure: the coordinator retries the step per its retry policy.

    Args:
        code: A short machine-readable reason, e.g. ``processor_unavailable``.
        message: A human-readable explanation.
    """

    retryable = True


def error_for(exc: BaseException) -> ReplyError:
    """The reply ``error`` for an exception raised by a handler.

    Args:
        exc: What the handler raised.

    Returns:
        ``StepError`` keeps its code and is not retryable, ``RetryableError`` is
        retryable, and anything else is retryable with the exception's type name as code.
    """
    if isinstance(exc, StepError):
        return ReplyError(
            code=exc.code[:200], message=exc.message[:_MAX_MESSAGE], retryable=exc.retryable
        )
    return ReplyError(
        code=type(exc).__name__[:200], message=str(exc)[:_MAX_MESSAGE], retryable=True
    )
