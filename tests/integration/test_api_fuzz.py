"""Schemathesis against the service's own OpenAPI, with and without API tokens.

The coordinator runs as ``python -m coordinator run`` against the real store (the session's
SecantusDB, or ``SAGA_TEST_MONGODB_URL``) and broker; schemathesis reads ``/openapi.json``
and sends generated requests, valid and invalid, to every operation. Every check it has
must pass but one (``positive_data_acceptance``, see below): no 5xx, every status and body
as documented, and with tokens configured the OpenAPI asks for them and the service
enforces them (without tokens it asks for none).

Quick by default (a few examples per operation, well under a minute); the full run with
``SAGA_TEST_FULL=1`` (more examples, and the stateful phase).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.helpers import Coordinator, write

pytestmark = pytest.mark.integration

FULL = os.environ.get("SAGA_TEST_FULL") == "1"
ORDER = """
name: order
version: 1
trigger: {event: order.placed, key: "${event.order_id}"}
steps:
  - name: reserve
    participant: inventory
    command: reserve
    compensation: {command: release}
"""


def schemathesis() -> list[str]:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed (the dev extra)")
    return [exe]


@pytest.mark.parametrize(
    "tokens", [None, "fuzz-writer:write,fuzz-reader:read"], ids=["open", "tokens"]
)
async def test_the_api_holds_to_its_openapi(
    coordinators: Callable[..., Coordinator],
    definitions_dir: Path,
    tmp_path: Path,
    tokens: str | None,
) -> None:
    write(definitions_dir, "order", ORDER)
    env = {"SAGA_LOG_LEVEL": "WARNING"}
    if tokens is not None:
        env["SAGA_API_TOKENS"] = tokens
    coordinator = coordinators(**env).start()
    await coordinator.wait_ready()
    command = [
        *schemathesis(),
        "run",
        f"{coordinator.url}/openapi.json",
        "--checks",
        "all",
        # A schema-valid request may still be refused with 422 for what JSON Schema cannot
        # say: a definition's YAML text is checked by the definition loader, and an input
        # (a free-form object) may hold a value MongoDB cannot store. Every other check holds.
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        "300" if FULL else "25",
        "--phases",
        "examples,coverage,fuzzing,stateful" if FULL else "examples,fuzzing",
        "--workers",
        "1",
        "--seed",
        os.environ.get("SAGA_TEST_FUZZ_SEED", "20261201"),
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--no-color",
        "--report-dir",
        str(tmp_path / "schemathesis"),
    ]
    if tokens is not None:
        command += ["--header", "Authorization: Bearer fuzz-writer"]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        cwd=tmp_path,  # its cache (.schemathesis/) stays out of the repository
    )
    output, _ = await asyncio.wait_for(process.communicate(), 900 if FULL else 240)
    report = output.decode(errors="replace")
    assert process.returncode == 0, report[-12_000:]
    log = coordinator.log()  # no request failed inside the app (the broker's noise aside)
    for sign in ("Exception in ASGI application", "unexpected error on"):
        assert sign not in log, log[-4000:]
    assert await coordinator.terminate() == 0
