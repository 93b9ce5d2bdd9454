"""The SDK against hostile commands, deadlines, retry keys and its own bugs (real broker).

The fixtures are those of ``test_participant_sdk``: the test plays the coordinator.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from participants import Participant
from schemas.envelope import HEADER_REJECTION, idempotency_key
from tests.integration import test_participant_sdk as sdk
from tests.integration.test_participant_sdk import (
    Broker,
    Factory,
    assert_quiet,
    next_message,
    reply_of,
)

# The fixtures of the SDK's main test module, shared here.
broker = sdk.broker
inventory = sdk.inventory
make_inventory = sdk.make_inventory

pytestmark = pytest.mark.integration


def headers_for(saga_id: str, **changes: Any) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "x-saga-id": saga_id,
        "x-saga-step": "reserve",
        "x-saga-kind": "action",
        "x-saga-attempt": 1,
        "x-idempotency-key": idempotency_key(saga_id, "reserve", "action"),
        "x-deadline": (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
    }
    headers.update(changes)
    return {k: v for k, v in headers.items() if v is not None}


async def test_a_command_past_its_deadline_is_not_executed(
    broker: Broker,
    inventory: Participant,
) -> None:
    saga_id = uuid.uuid4().hex
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    await broker.send(
        "reserve_stock", {"order_id": "o-1"}, headers=headers_for(saga_id, **{"x-deadline": past})
    )
    body, message = await reply_of(broker)
    assert body["status"] == "failed"
    assert body["error"]["code"] == "deadline_exceeded"
    assert body["error"]["retryable"] is True
    assert (message.headers or {})["x-saga-attempt"] == 1
    assert inventory.executions[idempotency_key(saga_id, "reserve", "action")] == 0
    # Not stored: the next attempt, within its deadline, runs the handler.
    await broker.send("reserve_stock", {"order_id": "o-1"}, saga_id=saga_id, attempt=2)
    body, _ = await reply_of(broker)
    assert body["status"] == "succeeded"


async def test_an_operator_retry_key_is_a_new_request(
    broker: Broker,
    inventory: Participant,
) -> None:
    saga_id = uuid.uuid4().hex
    await broker.send("reserve_stock", {"order_id": "o-1"}, headers=headers_for(saga_id))
    first, _ = await reply_of(broker)
    retried = f"{idempotency_key(saga_id, 'reserve', 'action')}:r1"
    headers = headers_for(saga_id, **{"x-idempotency-key": retried, "x-saga-attempt": 1})
    await broker.send("reserve_stock", {"order_id": "o-1"}, headers=headers)
    second, message = await reply_of(broker)
    assert first["status"] == second["status"] == "succeeded"
    assert first["output"]["reservation_id"] != second["output"]["reservation_id"]  # ran again
    assert inventory.executions[retried] == 1
    assert (message.headers or {})["x-idempotency-key"] == retried
    await broker.send("reserve_stock", {"order_id": "o-1"}, headers=headers)  # the same retry
    third, _ = await reply_of(broker)
    assert third == second and inventory.executions[retried] == 1


async def test_hostile_commands_are_dead_lettered_and_the_participant_goes_on(
    broker: Broker,
    inventory: Participant,
) -> None:
    saga_id = uuid.uuid4().hex
    cases: dict[str, tuple[bytes, dict[str, Any], str]] = {
        "deep": (b"[" * 100_000 + b"]" * 100_000, headers_for(saga_id), "deeper than"),
        "surrogate": (b'{"a": "\\ud800"}', headers_for(saga_id), "lone surrogate"),
        "huge-int": (b'{"a": ' + b"9" * 5000 + b"}", headers_for(saga_id), "beyond 64 bits"),
        "nan": (b'{"a": NaN}', headers_for(saga_id), "NaN"),
        "superscript": (b"{}", headers_for(saga_id, **{"x-saga-attempt": "²"}), "attempt"),
        "digits": (b"{}", headers_for(saga_id, **{"x-saga-attempt": "9" * 5000}), "attempt"),
        "bool": (b"{}", headers_for(saga_id, **{"x-saga-attempt": True}), "attempt"),
        "negative": (b"{}", headers_for(saga_id, **{"x-saga-attempt": -3}), "attempt"),
        "bad-key": (b"{}", headers_for(saga_id, **{"x-idempotency-key": "k"}), "idempotency"),
        "not-utf8": (
            b"{}",
            headers_for(saga_id, **{"x-saga-step": bytearray(b"\xff")}),
            "x-saga-step",
        ),
    }
    for name, (raw, headers, _) in cases.items():
        headers = {**headers, "x-case": name}
        await broker.send("reserve_stock", None, raw=raw, headers=headers)
    reasons: dict[str, str] = {}
    for _ in cases:
        dead = await next_message(broker.dead)
        case = (dead.headers or {})["x-case"]
        reasons[str(case.decode() if isinstance(case, bytes) else case)] = str(
            (dead.headers or {})[HEADER_REJECTION]
        )
    for name, (_, _, why) in cases.items():
        assert why in reasons[name], (name, reasons[name])
    await assert_quiet(broker.replies)
    await broker.send("reserve_stock", {"order_id": "o-2"})
    body, _ = await reply_of(broker)
    assert body["status"] == "succeeded"


async def test_a_bug_is_tried_a_bounded_number_of_times_counted_by_the_sdk(
    broker: Broker,
    make_inventory: Factory,
) -> None:
    async with make_inventory(delivery_limit=3) as inventory:
        inventory.policy = type(inventory.policy)(max_tries=3, delay=0.05)
        assert inventory._consumer is not None
        inventory._consumer.policy = inventory.policy
        calls = 0

        async def broken(*_: Any) -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("a bug on the SDK's path")

        inventory._executor.outcome = broken  # type: ignore[method-assign]
        await broker.send("reserve_stock", {"order_id": "o-3"})
        dead = await next_message(broker.dead)
        headers = dead.headers or {}
        assert str(headers[HEADER_REJECTION]).startswith("failed 3 tries; last error: RuntimeError")
        assert headers["x-saga-tries"] == 2
        assert headers.get("x-delivery-count", 0) == 0  # the broker never counted a redelivery
        assert json.loads(dead.body) == {"order_id": "o-3"}
        await assert_quiet(broker.dead, 1.0)
        assert calls == 3
        await assert_quiet(broker.replies)
