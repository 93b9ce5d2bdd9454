"""What the SDK holds and retries (an unavailable dependency) and what it counts as a bug."""

from __future__ import annotations

import aiormq
import pytest
from bson.errors import InvalidDocument
from pymongo.errors import (
    AutoReconnect,
    DocumentTooLarge,
    NetworkTimeout,
    ServerSelectionTimeoutError,
    WriteError,
)

from participants._participant import unavailable


@pytest.mark.parametrize(
    "error",
    [
        AutoReconnect("primary stepped down"),
        ServerSelectionTimeoutError("no server"),
        NetworkTimeout("timed out"),
        aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_outages_are_held_and_retried(error: BaseException) -> None:
    assert unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        WriteError("bad key", 2),
        DocumentTooLarge("over 16 MiB"),
        InvalidDocument("key '\\x00' must not contain NUL"),
        KeyError("x"),
        RuntimeError("a bug"),
    ],
)
def test_data_mongodb_cannot_store_and_bugs_are_not_outages(error: BaseException) -> None:
    assert not unavailable(error)
