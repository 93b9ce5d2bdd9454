"""Decoding commands per SPEC §3 (pure, no broker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from participants._delivery import BadCommand, decode_command

HEADERS = {
    "x-saga-id": "s-1",
    "x-saga-step": "reserve",
    "x-saga-kind": "action",
    "x-saga-attempt": 2,
    "x-idempotency-key": "s-1:reserve:action",
}


def decode(body: bytes = b"{}", **overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "body": body,
        "headers": HEADERS,
        "message_type": "reserve_stock",
        "routing_key": "inventory.reserve_stock",
        "reply_to": None,
    }
    arguments.update(overrides)
    return decode_command(**arguments)


def test_a_good_command() -> None:
    command = decode(json.dumps({"order_id": "o-1"}).encode(), reply_to="coordinator-2")
    delivery = command.delivery
    assert command.input == {"order_id": "o-1"}
    assert command.reply_to == "coordinator-2"
    assert (delivery.saga_id, delivery.step, delivery.kind) == ("s-1", "reserve", "action")
    assert delivery.attempt == 2
    assert delivery.idempotency_key == "s-1:reserve:action"
    assert delivery.command == "reserve_stock"
    assert delivery.action_key == "s-1:reserve:action"
    assert delivery.deadline is None


def test_defaults_and_fallbacks() -> None:
    headers = {**HEADERS, "x-saga-attempt": "3", "x-saga-step": b"reserve"}
    command = decode(headers=headers, message_type=None)
    assert command.reply_to == "coordinator"
    assert command.delivery.command == "reserve_stock"
    assert command.delivery.attempt == 3
    assert command.delivery.step == "reserve"


def test_deadline_is_parsed_as_utc() -> None:
    command = decode(headers={**HEADERS, "x-deadline": "2030-01-02T03:04:05Z"})
    assert command.delivery.deadline == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"{nope", HEADERS, "not JSON"),
        (b"\xff\xfe", HEADERS, "not JSON"),
        (b"[1]", HEADERS, "JSON list, not a JSON object"),
        (b'"text"', HEADERS, "JSON str, not a JSON object"),
        (b"{}", {}, "missing headers: x-saga-id, x-saga-step"),
        (b"{}", None, "missing headers"),
        (b"{}", {**HEADERS, "x-saga-kind": "undo"}, "x-saga-kind"),
        (b"{}", {**HEADERS, "x-saga-attempt": 0}, "x-saga-attempt"),
        (b"{}", {**HEADERS, "x-saga-attempt": "two"}, "x-saga-attempt"),
        (b"{}", {**HEADERS, "x-deadline": "tomorrow"}, "x-deadline"),
    ],
)
def test_bad_commands(body: bytes, headers: dict[str, Any] | None, reason: str) -> None:
    with pytest.raises(BadCommand) as caught:
        decode(body, headers=headers)
    assert reason in caught.value.reason


def test_size_limit() -> None:
    with pytest.raises(BadCommand, match="over the limit of 10 bytes"):
        decode(b'{"a": "0123456789"}', max_body_bytes=10)


def test_no_command_name() -> None:
    with pytest.raises(BadCommand, match="command name"):
        decode(message_type=None, routing_key=None)
