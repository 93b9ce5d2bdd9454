"""The coordinator's configuration: one settings object, read from ``SAGA_*`` variables.

Only ``coordinator/app.py`` builds ``CoordinatorSettings``; every other module receives the
values it needs as arguments, so nothing else reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["CoordinatorSettings"]


class CoordinatorSettings(BaseSettings):
    """Every knob of ``saga-coordinator run`` (SPEC §6); defaults serve a developer machine."""

    model_config = SettingsConfigDict(env_prefix="SAGA_", env_nested_delimiter="__", extra="ignore")

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    """One broker, or several nodes of a cluster comma-separated: connect to the first that
    answers, fail over to the next on every reconnection."""
    mongodb_url: str = "mongodb://127.0.0.1:27017"
    mongodb_database: str = "saga"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    definitions_dir: Path | None = None
    """YAML definitions registered at start-up."""
    api_tokens: str | None = None
    """Bearer tokens for ``/v1`` (their format belongs to the REST API)."""
    api_allow_anonymous: bool = False
    """Serve ``/v1`` without tokens on a non-loopback ``http_host`` (refused otherwise)."""
    exchange_prefix: str = Field(default="saga", min_length=1)
    reply_to: str = Field(default="coordinator", min_length=1)
    """The routing key of the coordinator's replies queue on the replies exchange."""
    prefetch: int = Field(default=64, ge=1, le=10_000)
    max_message_bytes: int = Field(default=1024 * 1024, ge=1024)
    """A message body over this many bytes is dead-lettered."""
    max_json_depth: int = Field(default=64, ge=1, le=1000)
    """A message body whose arrays and objects nest deeper than this is dead-lettered."""
    max_deliveries: int = Field(default=5, ge=1, le=1000)
    """A message whose handling fails this many times for an unexpected reason (a bug) is
    dead-lettered with the error; the tries are counted by the coordinator (``x-saga-tries``),
    not by the broker."""
    retry_delay: float = Field(default=1.0, gt=0, le=60)
    """Seconds before a message is tried again after a bug, and the first pause while MongoDB
    or RabbitMQ is unavailable (doubling up to ``max_retry_delay``)."""
    max_retry_delay: float = Field(default=30.0, gt=0, le=600)
    publish_timeout: float = Field(default=15.0, gt=0, le=600)
    """Seconds to wait for the broker's confirm of a published message."""
    timer_interval: float = Field(default=0.2, gt=0)
    """Seconds between two polls for due timers."""
    timer_lease: float = Field(default=30.0, gt=0)
    """Seconds a replica owns a due instance it claimed, before another may claim it."""
    timer_batch: int = Field(default=100, ge=1)
    relay_interval: float = Field(default=1.0, gt=0)
    """Seconds between two scans for outbox entries left unpublished."""
    relay_age: float = Field(default=5.0, gt=0)
    """Seconds an outbox entry must be old before the relay publishes it again."""
    definitions_refresh: float = Field(default=5.0, gt=0)
    """Seconds between two reloads of the latest definitions (new trigger bindings)."""
    state_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    """Bytes of instance states (their JSON size) kept in memory, least recently used
    evicted first, to skip the read before a transition; 0: off. Default 64 MiB."""
    max_saga_bytes: int = Field(default=8 * 1024 * 1024, ge=16 * 1024, le=15 * 1024 * 1024)
    """A saga document's size budget (BSON bytes); a change that would exceed it is
    refused (a reply's output: the attempt fails with ``invalid_reply``). Default 8 MiB."""
    shutdown_grace: float = Field(default=10.0, gt=0)
    """Seconds in-flight messages get to finish after SIGTERM."""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    otel_enabled: bool = False
    """Export a span per transition over OTLP (needs the ``otel`` extra)."""
