"""What a MongoDB error means, for the coordinator's store and the participant SDK's records.

Two questions every caller of the driver asks: is MongoDB only unable *now* (wait and try
again), or is the data such that it can never be stored (retrying is pointless)?
"""

from __future__ import annotations

from bson.errors import BSONError
from pymongo.errors import WriteError

__all__ = ["TRANSIENT_CODES", "UNSTORABLE_ERRORS", "refused"]

TRANSIENT_CODES = frozenset(
    {6, 7, 50, 64, 89, 91, 112, 189, 251, 262, 9001, 10107, 11600, 11602, 13435, 13436}
)
"""Server error codes that mean "not now" (host unreachable, shutting down, not primary,
write conflict, time limit…): the same operation may succeed later."""

UNSTORABLE_ERRORS: tuple[type[BaseException], ...] = (
    BSONError,  # InvalidDocument (a NUL in a key), DocumentTooLarge, InvalidStringData
    OverflowError,  # an integer over 8 bytes
    UnicodeEncodeError,  # a lone surrogate in a string
    RecursionError,  # nesting beyond what the encoder can walk
)
"""What the driver raises for data it can never encode."""


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` says the data can never be stored: the encoder refuses it, or the
    server refuses the document with a write error that is not one of "not now"."""
    if isinstance(exc, UNSTORABLE_ERRORS):
        return True
    return (
        isinstance(exc, WriteError)
        and exc.code not in TRANSIENT_CODES
        and not any(exc.has_error_label(label) for label in ("RetryableWriteError", "ResetPool"))
    )
