"""The one message codec (``schemas.codec``) as both consumers use it: hostile bodies and
headers are refused with a reason, never with an uncaught exception."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from coordinator.adapters.rabbit import returned_reply
from coordinator.adapters.wire import RawMessage, decode_event, decode_reply
from coordinator.engine.state import Command
from participants._delivery import BadCommand, decode_command
from schemas.codec import BadMessage, Limits, decode_object, parse_idempotency_key

REPLY_HEADERS = {
    "x-saga-id": "s-1",
    "x-saga-step": "reserve",
    "x-saga-kind": "action",
    "x-saga-attempt": 2,
    "x-idempotency-key": "s-1:reserve:action",
}

HOSTILE_BODIES: list[tuple[bytes, str, str]] = [
    (b"[" * 100_000 + b"]" * 100_000, "too_deep", "deeper than the limit of 64"),
    (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too_deep", "limit of 64"),
    (b'{"a":' + b"[" * 100_000 + b"}", "not_json", "brackets"),
    (b'{"a":' + b"[" * 64 + b"]" * 64 + b"}", "too_deep", "limit of 64"),
    (b'{"a":"\\ud800"}', "not_json", "lone surrogate"),
    (b'{"\\udfff":1}', "not_json", "lone surrogate"),
    (b"\xed\xa0\x80", "not_json", "not UTF-8"),
    (b'{"a":NaN}', "not_json", "NaN"),
    (b'{"a":-Infinity}', "not_json", "Infinity"),
    (b'{"a":1e400}', "not_json", "overflows"),
    (b'{"a":9223372036854775808}', "not_json", "beyond 64 bits"),
    (b'{"a":' + b"9" * 5000 + b"}", "not_json", "5000 digits"),
    (b"null", "not_object", "not a JSON object"),
]


@pytest.mark.parametrize(("body", "category", "reason"), HOSTILE_BODIES)
def test_hostile_bodies_are_refused_with_a_reason(body: bytes, category: str, reason: str) -> None:
    with pytest.raises(BadMessage) as refused:
        decode_object(body, Limits(max_bytes=10**7))
    assert refused.value.category == category
    assert reason in refused.value.reason


@pytest.mark.parametrize(("body", "category", "reason"), HOSTILE_BODIES)
def test_both_consumers_refuse_them_alike(body: bytes, category: str, reason: str) -> None:
    with pytest.raises(BadMessage) as coordinator:
        decode_reply(RawMessage(body, "coordinator", REPLY_HEADERS), max_bytes=10**7)
    with pytest.raises(BadMessage) as event:
        decode_event(RawMessage(body, "order.placed", {}), max_bytes=10**7)
    with pytest.raises(BadCommand) as sdk:
        decode_command(
            body=body,
            headers=REPLY_HEADERS,
            message_type="reserve",
            routing_key="inventory.reserve",
            reply_to=None,
            max_body_bytes=10**7,
        )
    assert coordinator.value.reason == event.value.reason == sdk.value.reason
    assert reason in sdk.value.reason


def test_what_is_within_the_limits_decodes() -> None:
    nested: Any = {"a": [[["x"]] * 3], "n": 9223372036854775807, "m": -(2**63), "e": "\U0001f600"}
    text = json.dumps(nested)  # the emoji as a surrogate pair escape
    assert decode_object(text.encode()) == nested
    assert decode_object(b'{"a":' + b"[" * 63 + b"]" * 63 + b"}")["a"]
    assert decode_object(b'{"a": "[[[[' + b"[" * 500 + b'"}')  # brackets in strings
    assert decode_object(b'{"k\\"[[[": "\\\\"}') == {'k"[[[': "\\"}


@pytest.mark.parametrize(
    "attempt", ["²", "9" * 5000, True, False, -1, 0, 2**31, 1.0, "1.5", " 1", b"\xff", [1]]
)
def test_a_bad_attempt_header_is_refused_by_both(attempt: Any) -> None:
    headers = {**REPLY_HEADERS, "x-saga-attempt": attempt}
    with pytest.raises(BadMessage, match="x-saga-attempt"):
        decode_reply(RawMessage(b'{"status": "succeeded"}', "coordinator", headers))
    with pytest.raises(BadCommand, match="x-saga-attempt"):
        decode_command(
            body=b"{}", headers=headers, message_type="r", routing_key=None, reply_to=None
        )


@pytest.mark.parametrize("attempt", [1, "7", b"12", 2**31 - 1])
def test_a_good_attempt_header(attempt: Any) -> None:
    headers = {**REPLY_HEADERS, "x-saga-attempt": attempt}
    reply = decode_reply(RawMessage(b'{"status": "succeeded"}', "coordinator", headers))
    assert reply.attempt == int(attempt)


@pytest.mark.parametrize(
    ("key", "retry"),
    [("s-1:reserve:action", 0), ("s-1:reserve:action:r1", 1), ("s-1:reserve:action:r12", 12)],
)
def test_the_retry_form_of_the_idempotency_key(key: str, retry: int) -> None:
    assert parse_idempotency_key(key, "s-1", "reserve", "action") == retry
    headers = {**REPLY_HEADERS, "x-idempotency-key": key}
    decode_reply(RawMessage(b'{"status": "succeeded"}', "coordinator", headers))
    command = decode_command(
        body=b"{}", headers=headers, message_type="r", routing_key=None, reply_to=None
    )
    assert command.delivery.idempotency_key == key  # a distinct request per retry


@pytest.mark.parametrize(
    "key",
    [
        "s-1:reserve:action:r0",
        "s-1:reserve:action:r",
        "s-1:reserve:action:r01",
        "s-1:reserve:action:x1",
        "s-1:reserve:compensation",
        "s-2:reserve:action:r1",
        "s-1:reserve:action:r²",
    ],
)
def test_other_idempotency_keys_are_refused(key: str) -> None:
    headers = {**REPLY_HEADERS, "x-idempotency-key": key}
    with pytest.raises(BadMessage, match="x-idempotency-key"):
        decode_reply(RawMessage(b'{"status": "succeeded"}', "coordinator", headers))
    with pytest.raises(BadCommand, match="x-idempotency-key"):
        decode_command(
            body=b"{}", headers=headers, message_type="r", routing_key=None, reply_to=None
        )


def test_a_returned_command_stands_for_a_retryable_participant_unavailable() -> None:
    command = Command(
        message_id="s-1:reserve:action:3",
        routing_key="inventory.reserve",
        type="reserve",
        reply_to="coordinator",
        timestamp=datetime.now(UTC),
        headers=dict(REPLY_HEADERS, **{"x-saga-attempt": 3}),
        body={},
    )
    reply = returned_reply(command)
    assert reply is not None
    assert (reply.saga_id, reply.step, reply.kind, reply.attempt) == ("s-1", "reserve", "action", 3)
    assert reply.reply.status == "failed"
    assert reply.reply.error.code == "participant_unavailable"
    assert reply.reply.error.retryable is True
    broken = command.model_copy(update={"headers": {"x-saga-id": "s-1"}})
    assert returned_reply(broken) is None
