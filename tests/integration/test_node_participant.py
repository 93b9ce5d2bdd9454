"""The Node.js example participant (``participants/examples/node``), written from the wire
contract alone, in real sagas: the real broker, a coordinator process, an SDK participant
beside it. It proves the contract is language-neutral: replies, idempotency by key, and
compensation (of a performed action, and of one never performed)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from participants import Delivery, Participant, StepError
from tests.integration.helpers import ROOT, Broker, Coordinator, Sagas, running, write

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "participants" / "examples" / "node"

RESTOCK = """
name: restock
version: 1
defaults:
  timeout: 10s
  retry: {max_attempts: 2, backoff: 200ms}
steps:
  - name: reserve
    participant: warehouse
    command: reserve
    input: {sku: "${input.sku}", qty: "${input.qty}"}
    compensation:
      command: release
      input: {reservation_id: "${steps.reserve.output.reservation_id}"}
  - name: charge
    participant: payments
    command: charge
    input: {amount: "${input.amount}"}
"""


@pytest.fixture(scope="module")
def node_example() -> Path:
    """The example with its dependencies installed (``npm ci``), or skip."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node.js participant (Node 20 or later)")
    if not (EXAMPLE / "node_modules" / "amqplib").is_dir():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return EXAMPLE


class NodeParticipant:
    def __init__(self, example: Path, amqp_url: str, prefix: str, log: Path) -> None:
        self.log = log
        self.queue = f"{prefix}.warehouse.commands"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["node", "participant.js"],
                cwd=example,
                env={
                    **os.environ,
                    "SAGA_AMQP_URL": amqp_url,
                    "SAGA_EXCHANGE_PREFIX": prefix,
                    "WAREHOUSE_QUEUE": self.queue,
                },
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_consuming(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while f"consuming {self.queue}" not in self.output():
            assert self.proc.poll() is None, f"node exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"node did not start:\n{self.output()}"
            await asyncio.sleep(0.1)

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.output().splitlines() if needle in line]


@pytest.fixture
async def warehouse(
    node_example: Path, amqp_url: str, prefix: str, tmp_path: Path, broker: Broker
) -> AsyncIterator[NodeParticipant]:
    node = NodeParticipant(node_example, amqp_url, prefix, tmp_path / "node.log")
    try:
        await node.wait_consuming()
        yield node
    finally:
        node.proc.terminate()
        try:
            node.proc.wait(10)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(10)
        await broker.delete_topology([node.queue])


def payments(make: Callable[[str], Participant]) -> Participant:
    participant = make("payments")

    @participant.action("charge")
    async def charge(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        if input["amount"] > 100:
            raise StepError("card_declined", "over the limit")
        return {"charge_id": f"c-{delivery.saga_id}"}

    return participant


async def test_a_node_participant_completes_compensates_and_answers_a_duplicate_from_its_record(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    participants: Callable[[str], Participant],
    sagas: Sagas,
    broker: Broker,
    warehouse: NodeParticipant,
    prefix: str,
    amqp_url: str,
) -> None:
    write(definitions_dir, "restock", RESTOCK)
    coordinator = coordinators().start()
    await coordinator.wait_ready()
    async with running(payments(participants)):
        async with httpx.AsyncClient(base_url=coordinator.url) as api:

            async def restock(sku: str, qty: int, amount: int) -> str:
                input = {"sku": sku, "qty": qty, "amount": amount}
                started = await api.post(
                    "/v1/sagas", json={"definition": "restock", "input": input}
                )
                assert started.status_code == 201, started.text
                return str(started.json()["id"])

            ok = await restock("BOOK-42", 2, 40)
            undone = await restock("MUG-7", 1, 500)  # the charge is declined: released
            sold_out = await restock("OOS-1", 1, 5)  # the warehouse fails its own step
        docs = {doc["_id"]: doc for doc in await sagas.wait_terminal(3)}

    completed = docs[ok]
    assert completed["status"] == "completed"
    reservation = completed["steps"][0]["output"]["reservation_id"]
    assert reservation.startswith("wr-")

    compensated = docs[undone]
    assert compensated["status"] == "compensated"
    assert [step["status"] for step in compensated["steps"]] == ["compensated", "failed"]
    released = warehouse.lines(f"{undone}:reserve:compensation release -> succeeded")
    assert len(released) == 1 and '"released":true' in released[0], warehouse.output()

    failed = docs[sold_out]
    assert failed["status"] == "compensated"
    assert failed["steps"][0]["status"] == "failed"
    assert failed["reason"]["code"] == "out_of_stock"

    # The same command again (as after a redelivery): the stored outcome, not a new run.
    command_headers = {
        "x-saga-id": ok,
        "x-saga-name": "restock",
        "x-saga-version": 1,
        "x-saga-step": "reserve",
        "x-saga-kind": "action",
        "x-saga-attempt": 1,
        "x-idempotency-key": f"{ok}:reserve:action",
    }
    reply, props = await ask(
        broker,
        prefix,
        "warehouse.reserve",
        "reserve",
        {"sku": "BOOK-42", "qty": 2},
        command_headers,
    )
    assert reply == {"status": "succeeded", "output": {"reservation_id": reservation}}
    assert props.correlation_id == ok
    assert props.message_id and props.message_id != command_headers["x-idempotency-key"]
    for name, value in command_headers.items():
        assert props.headers[name] == value, name
    assert len(warehouse.lines(f"{ok}:reserve:action reserve")) == 2  # two replies…
    assert reply["output"]["reservation_id"] == reservation  # …one reservation

    # A compensation of an action it never performed: success, nothing undone.
    never = uuid.uuid4().hex
    reply, _ = await ask(
        broker,
        prefix,
        "warehouse.release",
        "release",
        {"reservation_id": None},
        {
            **command_headers,
            "x-saga-id": never,
            "x-saga-kind": "compensation",
            "x-idempotency-key": f"{never}:reserve:compensation",
        },
    )
    assert reply["status"] == "succeeded" and reply["output"]["undone"] is False


async def ask(
    broker: Broker,
    prefix: str,
    routing_key: str,
    command: str,
    body: dict[str, Any],
    headers: dict[str, Any],
) -> tuple[dict[str, Any], aio_pika.abc.AbstractIncomingMessage]:
    """Publish a command with a reply_to of the test's own, and read the reply."""
    reply_to = f"test-{uuid.uuid4().hex[:8]}"
    channel = broker.channel
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(f"{prefix}.replies", reply_to)
    commands = await channel.get_exchange(f"{prefix}.commands", ensure=False)
    await commands.publish(
        aio_pika.Message(
            json.dumps(body).encode(),
            type=command,
            reply_to=reply_to,
            correlation_id=headers["x-saga-id"],
            message_id=uuid.uuid4().hex,
            content_type="application/json",
            headers=headers,
        ),
        routing_key=routing_key,
    )
    deadline = time.monotonic() + 20
    while (message := await queue.get(no_ack=True, fail=False)) is None:
        assert time.monotonic() < deadline, "no reply from the node participant"
        await asyncio.sleep(0.1)
    await queue.delete()
    return json.loads(message.body), message
