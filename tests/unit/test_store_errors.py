"""The store's error taxonomy: a driver error is classified by what it means."""

from __future__ import annotations

import pytest
from bson.errors import InvalidDocument
from pymongo.errors import (
    AutoReconnect,
    DocumentTooLarge,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WriteError,
)

from coordinator.adapters.mongo import store_error, translate_errors, write_error
from coordinator.errors import StoreUnavailable, UnstorableData


@pytest.mark.parametrize(
    "exc",
    [
        AutoReconnect("connection reset"),
        NetworkTimeout("timed out"),
        ServerSelectionTimeoutError("no primary"),
        WriteError("not primary", code=10107),
        OperationFailure("interrupted at shutdown", code=11600),
        OperationFailure("something new", code=999_999),
    ],
)
def test_unreachable_or_unknown_is_unavailable(exc: Exception) -> None:
    assert type(store_error(exc, "save a saga")) is StoreUnavailable


@pytest.mark.parametrize(
    "exc",
    [
        DocumentTooLarge("BSON document too large"),
        InvalidDocument("Key names must not contain the NULL byte"),
        OverflowError("MongoDB can only handle up to 8-byte ints"),
        WriteError("Document can't have $ prefixed field names: $where", code=52),
        WriteError("Document exceeds maximum nesting depth", code=15),
    ],
)
def test_data_that_can_never_be_stored_is_unstorable(exc: Exception) -> None:
    assert isinstance(store_error(exc, "save a saga"), UnstorableData)


def test_bulk_write_errors_are_classified_by_code() -> None:
    assert type(write_error({"code": 91, "errmsg": "shutting down"}, "save")) is StoreUnavailable
    refused = write_error({"code": 52, "errmsg": "$ prefixed"}, "save")
    assert isinstance(refused, UnstorableData)
    assert "$ prefixed" in str(refused)


def test_translation_chains_the_driver_error() -> None:
    cause = InvalidDocument("bad key")
    with pytest.raises(UnstorableData) as caught, translate_errors("save a saga"):
        raise cause
    assert caught.value.__cause__ is cause
