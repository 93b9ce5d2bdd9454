"""The store's errors, by what they mean: MongoDB unavailable, or data it can never store.

``translate_errors`` re-raises every driver error as ``StoreUnavailable`` (wait, try again,
``/readyz`` 503) or ``UnstorableData`` (never retried; the input is rejected), chained with
``from``; ``encode_saga`` encodes a saga document once and checks its size budget. The
in-memory double uses ``encode_saga`` too, so both stores refuse the same data.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from pymongo.errors import PyMongoError

from coordinator.errors import AdapterError, StoreUnavailable, UnstorableData
from schemas.storable import TRANSIENT_CODES, UNSTORABLE_ERRORS, refused

__all__ = [
    "DEFAULT_MAX_SAGA_BYTES",
    "DRIVER_ERRORS",
    "UNSTORABLE_ERRORS",
    "encode_saga",
    "store_error",
    "translate_errors",
    "write_error",
]

DRIVER_ERRORS: tuple[type[BaseException], ...] = (PyMongoError, *UNSTORABLE_ERRORS)


def store_error(exc: BaseException, operation: str) -> AdapterError:
    """The coordinator's error for a driver error, by what it means.

    Data that can never be stored (the encoder refuses it, or the server refuses the
    document with a write error: ``schemas.storable.refused``) → ``UnstorableData``: never
    retried. Anything else → ``StoreUnavailable``: wait and try again. That covers the
    unreachable or temporarily unable (connection failures, timeouts, a failover, the
    transient server codes), and is the cautious choice for an error that is not
    understood: nothing is given up on it.
    """
    if isinstance(exc, UNSTORABLE_ERRORS):
        return UnstorableData(f"cannot {operation}: the data cannot be stored: {exc}")
    if refused(exc):
        return UnstorableData(f"cannot {operation}: MongoDB refuses the data: {exc}")
    return StoreUnavailable(f"MongoDB failed to {operation}: {exc}")


def write_error(error: Mapping[str, Any], operation: str) -> AdapterError:
    """The coordinator's error for one entry of a bulk write's ``writeErrors``."""
    message = error.get("errmsg", "")
    if error.get("code") in TRANSIENT_CODES:
        return StoreUnavailable(f"MongoDB failed to {operation}: {message}")
    return UnstorableData(f"cannot {operation}: MongoDB refuses the data: {message}")


@contextmanager
def translate_errors(operation: str) -> Iterator[None]:
    """Re-raise driver errors as ``StoreUnavailable`` or ``UnstorableData`` (``store_error``),
    chained with ``from``."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise store_error(exc, operation) from exc


DEFAULT_MAX_SAGA_BYTES = 8 * 1024 * 1024
"""A saga document's size budget: half of MongoDB's 16 MiB, so no saga nears the hard limit."""


def encode_saga(doc: dict[str, Any], max_bytes: int) -> RawBSONDocument:
    """``doc`` as BSON, once; raises ``UnstorableData`` when it cannot be stored.

    Encoding here, per write, means a document that cannot be encoded fails alone instead
    of failing the batch it would have joined, and the size budget is checked on the bytes
    that are sent.
    """
    with translate_errors(f"store saga {doc.get('_id')!r}"):
        raw = bson.encode(doc)
    if len(raw) > max_bytes:
        raise UnstorableData(
            f"saga {doc.get('_id')!r} would take {len(raw)} bytes, over its budget of "
            f"{max_bytes} bytes (SAGA_MAX_SAGA_BYTES)"
        )
    return RawBSONDocument(raw)
