"""Logging set-up: text or JSON lines, with the saga id and step on every saga line.

Code that logs about a saga passes ``extra={"saga_id": …, "step": …}`` (or uses
``saga_log``); both formatters print those fields whenever a record carries them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "saga_extra"]

_SAGA_FIELDS = ("saga_id", "step", "kind", "attempt", "message_id")


def saga_extra(saga_id: str | None, step: str | None = None, **more: Any) -> dict[str, Any]:
    """The ``extra`` mapping for a log line about one saga (and one step of it)."""
    extra: dict[str, Any] = {"saga_id": saga_id, "step": step}
    extra.update(more)
    return extra


def _saga_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        name: getattr(record, name)
        for name in _SAGA_FIELDS
        if getattr(record, name, None) is not None
    }


class TextFormatter(logging.Formatter):
    """``time level logger: message [saga_id=… step=…]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _saga_fields(record)
        if fields:
            text += " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the saga fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_saga_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send every log record to stderr in the chosen format, replacing earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The AMQP client logs every reconnect attempt at length; keep its warnings only.
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
