"""The ``record_retention`` setting: parsing from the environment and validation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from pymongo import AsyncMongoClient

from participants import Participant, ParticipantSettings
from participants._store import DEFAULT_RECORD_RETENTION, OutcomeStore

MONGODB_URL = "mongodb://127.0.0.1:1/"


def participant(**options: Any) -> Participant:
    return Participant(
        "inventory", amqp_url="amqp://", mongodb_url=MONGODB_URL, database="d", **options
    )


def test_the_default_is_seven_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGA_RECORD_RETENTION", raising=False)
    assert timedelta(days=7) == DEFAULT_RECORD_RETENTION
    assert ParticipantSettings().record_retention == DEFAULT_RECORD_RETENTION
    assert participant().record_retention == DEFAULT_RECORD_RETENTION


@pytest.mark.parametrize(
    ("text", "retention"),
    [
        ("7d", timedelta(days=7)),
        ("36h", timedelta(hours=36)),
        (" 90m ", timedelta(minutes=90)),
        ("P14D", timedelta(days=14)),
        ("86400", timedelta(days=1)),
        ("1.5", timedelta(seconds=1.5)),
        ("none", None),
        ("Forever", None),
        ("null", None),
    ],
)
def test_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, text: str, retention: timedelta | None
) -> None:
    monkeypatch.setenv("SAGA_RECORD_RETENTION", text)
    settings = ParticipantSettings()
    assert settings.record_retention == retention
    assert Participant.from_settings("inventory", settings).record_retention == retention


@pytest.mark.parametrize("text", ["0s", "0", "-5", "soon", "7 weeks"])
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("SAGA_RECORD_RETENTION", text)
    with pytest.raises(ValidationError, match="record_retention"):
        ParticipantSettings()


@pytest.mark.parametrize("retention", [timedelta(0), timedelta(seconds=-1)])
def test_a_retention_must_be_longer_than_zero(retention: timedelta) -> None:
    with pytest.raises(ValueError, match="longer than zero"):
        participant(record_retention=retention)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URL, connect=False)
    with pytest.raises(ValueError, match="longer than zero"):
        OutcomeStore(client, "d", "inventory", retention=retention)


def test_none_keeps_records_forever() -> None:
    assert participant(record_retention=None).record_retention is None
    assert ParticipantSettings(record_retention=None).record_retention is None
