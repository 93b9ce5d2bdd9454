"""``saga-coordinator sagas …`` against a running coordinator process (SPEC §7).

The client runs as a user runs it (``python -m coordinator sagas …``); the coordinator is
the test's own ``run`` process with SDK participants: one saga compensates (a failed
charge), one fails for good (a compensation that cannot succeed) and is retried, one waits
for an approval that ``send-event`` delivers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from participants import Delivery, Participant, StepError
from tests.integration.helpers import (
    ROOT,
    Coordinator,
    Recorder,
    Sagas,
    running,
    succeeding,
    write,
)

pytestmark = pytest.mark.integration

ORDER = """
name: order
version: 1
steps:
  - name: reserve
    participant: inventory
    command: reserve
    input: {sku: "${input.sku}"}
    compensation: {command: release, input: {sku: "${input.sku}"}, retry: {max_attempts: 1}}
  - name: charge
    participant: payments
    command: charge
    retry: {max_attempts: 1}
"""


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("SAGA_API_URL", "SAGA_API_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "coordinator", "sagas", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def show_to_a_closed_pipe(saga_id: str, url: str) -> subprocess.CompletedProcess[str]:
    """``sagas show`` into a pipe whose reader has gone (``| head -c 0`` exits at once)."""
    return subprocess.run(
        f"{sys.executable} -m coordinator sagas show {saga_id} --url {url} | head -c 0",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def start(url: str, sku: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(
        f"{url}/v1/sagas",
        json={"definition": "order", "input": {"sku": sku}, "key": sku},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def order_participants(make: Callable[[str], Participant]) -> list[Participant]:
    inventory, payments = make("inventory"), make("payments")
    broken: set[str] = {"stuck"}

    @inventory.action("reserve")
    async def reserve(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        return {"reservation": f"r-{input['sku']}"}

    @inventory.compensation("release")
    async def release(input: dict[str, Any], delivery: Delivery) -> None:
        if input.get("sku") in broken:
            raise StepError("warehouse_offline", "the warehouse does not answer", retryable=True)

    @payments.action("charge")
    async def charge(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        raise StepError("card_declined", "the issuer declined the card")

    return [inventory, payments]


async def test_list_show_history_cancel_retry_and_errors(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    sagas: Sagas,
    broker: object,
) -> None:
    write(definitions_dir, "order", ORDER)
    coordinator = coordinators().start()
    await coordinator.wait_ready()
    url = coordinator.url
    async with running(*order_participants(participants)):
        compensated = start(url, "book")
        await sagas.wait_terminal(1)

        listed = cli("list", "--url", url)
        assert listed.returncode == 0, listed.stderr
        header, rule, row = listed.stdout.splitlines()[:3]
        assert header.split() == [
            "ID",
            "DEFINITION",
            "V",
            "KEY",
            "STATUS",
            "CREATED",
            "(UTC)",
            "REASON",
        ]
        assert set(rule) <= {"-", " "}
        assert row.split()[:5] == [compensated, "order", "1", "book", "compensated"]
        assert row.split()[-1] == "card_declined"

        as_json = json.loads(cli("list", "--json", "--status", "compensated", env_url(url)).stdout)
        assert [item["id"] for item in as_json["items"]] == [compensated]
        assert (
            json.loads(cli("list", "--json", "--status", "failed", env_url(url)).stdout)["items"]
            == []
        )

        shown = cli("show", compensated, "--url", url)
        assert shown.returncode == 0, shown.stderr
        out = shown.stdout
        assert "→ compensated" in out and "reason: card_declined: the issuer declined" in out
        assert "compensation.succeeded        reserve compensation #1" in out
        steps = {
            line.split()[0]: line.split()[1]
            for line in out.splitlines()
            if line.startswith(("reserve ", "charge "))
        }
        assert steps == {"reserve": "compensated", "charge": "failed"}

        piped = show_to_a_closed_pipe(compensated, url)
        assert piped.stderr == "", piped.stderr  # no BrokenPipeError traceback

        history = json.loads(cli("history", compensated, "--json", "--url", url).stdout)
        events = [entry["event"] for entry in history["items"]]
        assert events[0] == "saga.started" and events[-1] == "saga.compensated"

        refused = cli("cancel", compensated, "--reason", "too late", "--url", url)
        assert refused.returncode == 1
        assert refused.stderr.startswith(
            f"error: POST /v1/sagas/{compensated}/cancel: 409 Conflict: saga "
        )
        assert "only a running saga can be cancelled" in refused.stderr

        unknown = cli("retry", "no-such-saga", "--url", url)
        assert unknown.returncode == 1
        assert "404 Not Found: no saga with id 'no-such-saga'" in unknown.stderr

        event = cli(
            "send-event", "no-such-saga", "order.approved", "--body", '{"by": "ops"}', "--url", url
        )
        assert event.returncode == 1
        assert event.stderr.startswith("error: POST /v1/sagas/no-such-saga/events: 404 Not Found")

        stuck = start(url, "stuck")
        await sagas.wait(
            lambda docs: any(d["_id"] == stuck and d["status"] == "failed" for d in docs),
            what="the stuck saga failed",
        )
        retried = cli("retry", stuck, "--url", url)
        assert retried.returncode == 0, retried.stderr
        assert retried.stdout.strip() == f"retry: accepted; saga {stuck} is compensating"
        shown = cli("history", stuck, "--url", url).stdout
        assert (
            "saga.retried" in shown
            and "compensation.sent             reserve compensation #2" in shown
        )


def env_url(url: str) -> str:
    return f"--url={url}"


async def test_token_from_flag_or_environment_and_a_clear_401(
    coordinators: Callable[..., Coordinator], definitions_dir: Path, broker: object
) -> None:
    write(definitions_dir, "order", ORDER)
    coordinator = coordinators(SAGA_API_TOKENS="ops-secret:write,viewer:read").start()
    await coordinator.wait_ready()
    url = coordinator.url

    missing = cli("list", "--url", url)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: GET /v1/sagas: 401 Unauthorized")

    assert cli("list", "--url", url, "--token", "viewer").returncode == 0
    from_env = cli("list", SAGA_API_URL=url, SAGA_API_TOKEN="viewer")
    assert from_env.returncode == 0, from_env.stderr
    assert from_env.stdout.strip() == "no sagas"

    saga = start(url, "book", token="ops-secret")
    forbidden = cli("cancel", saga, "--reason", "r", "--url", url, "--token", "viewer")
    assert forbidden.returncode == 1 and "403 Forbidden" in forbidden.stderr


def test_a_service_that_is_not_running_gets_a_hint() -> None:
    done = cli("list", "--url", "http://127.0.0.1:1")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: no saga coordinator answers at http://127.0.0.1:1: start one "
        "(`saga-coordinator dev`), or point --url / SAGA_API_URL at it"
    )
    assert "Traceback" not in done.stderr


def test_send_event_refuses_a_body_that_is_not_an_object() -> None:
    done = cli(
        "send-event", "some-id", "order.approved", "--body", "[1]", "--url", "http://127.0.0.1:1"
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: --body must be a JSON object, not list"


APPROVAL = """
name: approval
version: 1
steps:
  - name: reserve
    participant: inventory
    command: reserve
    input: {sku: "${input.sku}"}
  - name: approved
    await: {event: order.approved, match: "${event.order_id}", equals: "${input.order_id}"}
    timeout: 1m
  - name: charge
    participant: payments
    command: charge
    input: {approved_by: "${steps.approved.output.by}"}
"""


async def test_send_event_completes_a_waiting_await_step(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    sagas: Sagas,
    broker: object,
) -> None:
    write(definitions_dir, "approval", APPROVAL)
    coordinator = coordinators().start()
    await coordinator.wait_ready()
    url = coordinator.url
    inventory, payments = participants("inventory"), participants("payments")
    inventory.action("reserve")(succeeding(Recorder(), {"reservation": "r-1"}))
    charged: list[dict[str, Any]] = []

    @payments.action("charge")
    async def charge(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        charged.append(input)
        return {"charge": "c-1"}

    async with running(inventory, payments), httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/v1/sagas",
            json={"definition": "approval", "input": {"sku": "book", "order_id": "o-7"}},
        )
        assert response.status_code == 201, response.text
        saga = response.json()["id"]
        await sagas.wait(
            lambda docs: any(
                step["name"] == "approved" and step["status"] == "waiting"
                for doc in docs
                for step in doc["steps"]
            ),
            what="the approval step waiting",
        )

        wrong = cli(
            "send-event", saga, "order.approved", "--body", '{"order_id": "o-8"}', "--url", url
        )
        assert wrong.returncode == 1
        assert wrong.stderr.startswith(f"error: POST /v1/sagas/{saga}/events: 409 Conflict")
        other = cli(
            "send-event", saga, "order.shipped", "--body", '{"order_id": "o-7"}', "--url", url
        )
        assert other.returncode == 1 and "409 Conflict" in other.stderr

        body = '{"order_id": "o-7", "by": "ana"}'
        sent = cli(
            "send-event",
            saga,
            "order.approved",
            "--body",
            body,
            "--message-id",
            "ok-1",
            "--url",
            url,
        )
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.strip().startswith(f"send-event: accepted; saga {saga} is ")
        await sagas.wait(
            lambda docs: any(d["_id"] == saga and d["status"] == "completed" for d in docs),
            what="the approved saga completed",
        )
        steps = (await http.get(f"/v1/sagas/{saga}")).json()["steps"]
    assert charged == [{"approved_by": "ana"}]
    shown = cli("show", saga, "--url", url)
    assert shown.returncode == 0, shown.stderr
    assert "event.received                approved action #1" in shown.stdout
    assert "order.approved, message ok-1" in " ".join(shown.stdout.split())
    approved = next(step for step in steps if step["name"] == "approved")
    assert approved["status"] == "succeeded"
    assert approved["output"] == {"order_id": "o-7", "by": "ana"}
