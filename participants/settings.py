"""Participant settings from the environment (``SAGA_*``), as for the coordinator (SPEC §6)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from participants._delivery import MAX_BODY_BYTES, MAX_DEPTH
from participants._store import DEFAULT_RECORD_RETENTION, checked_retention
from schemas.definition import DURATION_PATTERN, parse_duration

__all__ = ["ParticipantSettings"]


class ParticipantSettings(BaseSettings):
    """Where a participant connects and how it consumes.

    Every field reads ``SAGA_<FIELD>`` from the environment, e.g. ``SAGA_AMQP_URL``,
    ``SAGA_MONGODB_URL``, ``SAGA_MONGODB_DATABASE``, ``SAGA_EXCHANGE_PREFIX``.

    Attributes:
        amqp_url: The RabbitMQ URL, or several comma-separated (failover).
        mongodb_url: The MongoDB URL of the idempotency records.
        mongodb_database: The database holding the records.
        exchange_prefix: The exchange name prefix (SPEC §3).
        queue: The command queue; default ``<participant>.commands``.
        prefetch: Commands handled concurrently.
        delivery_limit: Tries of a command whose handling fails unexpectedly, then it is
            dead-lettered (counted by the SDK, not the broker).
        lease_seconds: How long a claim on an idempotency key holds without renewal.
        max_body_bytes: The command body size limit (default 1 MiB).
        max_json_depth: The command body nesting limit (default 64).
        record_retention: How long an idempotency record is kept once final; ``none``
            keeps records forever. ``SAGA_RECORD_RETENTION`` takes a duration such as
            ``7d`` or ``12h`` (as in saga definitions), ISO 8601 (``P7D``) or seconds.
    """

    model_config = SettingsConfigDict(env_prefix="SAGA_", extra="ignore")

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    mongodb_url: str = "mongodb://127.0.0.1:27017/"
    mongodb_database: str = "saga"
    exchange_prefix: str = "saga"
    queue: str | None = None
    prefetch: int = Field(default=32, ge=1, le=65535)
    delivery_limit: int = Field(default=5, ge=1)
    lease_seconds: float = Field(default=30.0, gt=0)
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, ge=1)
    max_json_depth: int = Field(default=MAX_DEPTH, ge=1, le=1000)
    record_retention: timedelta | None = DEFAULT_RECORD_RETENTION

    @field_validator("record_retention", mode="before")
    @classmethod
    def _parse_retention(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.lower() in {"none", "null", "forever"}:
                return None
            if re.match(DURATION_PATTERN, text):
                return parse_duration(text)
            if re.fullmatch(r"[+-]?\d+(\.\d*)?", text):
                return timedelta(seconds=float(text))
        return value

    @field_validator("record_retention")
    @classmethod
    def _positive_retention(cls, value: timedelta | None) -> timedelta | None:
        return checked_retention(value)
