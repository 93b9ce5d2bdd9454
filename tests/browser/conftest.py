"""Browser fixtures: Debian's Chromium driven by Playwright, and a shop for it to look at.

The browser is the system's ``/usr/bin/chromium`` (``scripts/bootstrap`` installs it),
launched headless with Playwright's ``executable_path``: no browser is downloaded. Without
it the tests are skipped, except under CI (``CI=true``), where they fail.

``shop`` starts a coordinator (the real process, store and broker, as in the integration
tests) with two definitions and two SDK participants whose behaviour each saga's input
chooses, then runs one saga to each end: completed, compensated, failed (a compensation
that keeps failing until the test mends it) and running (a charge held open).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from coordinator.console import HTMX_PATH
from participants import Delivery, Participant, RetryableError, StepError
from tests.integration.conftest import (  # the runtime tests' fixtures, shared
    broker,
    coordinators,
    definitions_dir,
    participants,
    sagas,
)
from tests.integration.helpers import Broker, Coordinator, Sagas, running, write

__all__ = ["broker", "coordinators", "definitions_dir", "participants", "sagas"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

SHOP = """
name: shop
version: 1
description: Reserve the goods, then charge the card.
trigger: {event: shop.order, key: "${event.order_id}"}
defaults:
  timeout: 30s
  retry: {max_attempts: 2, backoff: 300ms, multiplier: 1.0}
steps:
  - name: reserve
    participant: inventory
    command: reserve
    input: {order_id: "${input.order_id}"}
    compensation:
      command: release
      input: {order_id: "${input.order_id}"}
      retry: {max_attempts: 1}
  - name: charge
    participant: payments
    command: charge
    input: {order_id: "${input.order_id}", card: "${input.card}"}
"""

PING = """
name: ping
version: 1
description: One step, started over REST.
steps:
  - name: ping
    participant: inventory
    command: ping
"""


def _require_chromium() -> None:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: scripts/bootstrap installs it (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    _require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1500, "height": 1000})
    context.set_default_timeout(20_000)
    try:
        yield await context.new_page()
    finally:
        await context.close()


@dataclass
class Shop:
    coordinator: Coordinator
    sagas: Sagas
    broken: set[str] = field(default_factory=set)
    """Order ids whose stock release fails (retryably) until removed."""
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    """Charges with the card ``hold`` wait for it."""
    token: str | None = None

    @property
    def url(self) -> str:
        return self.coordinator.url

    async def saga_id(self, key: str) -> str:
        docs = await self.sagas.wait(
            lambda docs: any(doc.get("key") == key for doc in docs), what=f"saga {key}"
        )
        return next(str(doc["_id"]) for doc in docs if doc.get("key") == key)

    async def wait_status(self, key: str, status: str) -> None:
        await self.sagas.wait(
            lambda docs: any(d.get("key") == key and d["status"] == status for d in docs),
            what=f"saga {key} {status}",
        )


def _participants(make: Callable[[str], Participant], shop: Shop) -> list[Participant]:
    inventory, payments = make("inventory"), make("payments")

    @inventory.action("reserve")
    async def reserve(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        return {"reservation_id": f"r-{input['order_id']}"}

    @inventory.compensation("release")
    async def release(input: dict[str, Any], delivery: Delivery) -> None:
        if input["order_id"] in shop.broken:
            raise RetryableError("warehouse_offline", "the warehouse did not answer")

    @inventory.action("ping")
    async def ping(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        return {"pong": True}

    @payments.action("charge")
    async def charge(input: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
        if input["card"] == "flaky-declined" and delivery.attempt == 1:
            raise RetryableError("processor_busy", "the card processor asked to try again")
        if input["card"] in ("declined", "flaky-declined"):
            raise StepError("card_declined", "the issuer declined the card")
        if input["card"] == "hold":
            await asyncio.wait_for(shop.hold.wait(), 30)
        return {"charge_id": f"c-{input['order_id']}"}

    return [inventory, payments]


def shop_fixture(name: str, tokens: str | None = None) -> Any:
    """A ``Shop`` fixture called ``name``; ``tokens`` sets ``SAGA_API_TOKENS`` (the first
    entry's token is the shop's, for its REST calls)."""

    async def shop(
        coordinators: Callable[..., Coordinator],
        participants: Callable[[str], Participant],
        definitions_dir: Path,
        broker: Broker,
        sagas: Sagas,
    ) -> AsyncIterator[Shop]:
        if not HTMX_PATH.is_file():
            pytest.fail(f"{HTMX_PATH} is missing: run scripts/bootstrap (npm ci) first")
        write(definitions_dir, "shop", SHOP)
        write(definitions_dir, "ping", PING)
        env = {"SAGA_API_TOKENS": tokens} if tokens else {}
        coordinator = coordinators(**env).start()
        token = tokens.split(",")[0].split(":")[0] if tokens else None
        made = Shop(coordinator, sagas, broken={"o-broken"}, token=token)
        async with running(*_participants(participants, made)):
            await coordinator.wait_ready()
            for order, card in (
                ("o-ok", "ok"),
                ("o-declined", "declined"),
                ("o-broken", "flaky-declined"),
                ("o-hold", "hold"),
            ):
                await broker.event("shop.order", {"order_id": order, "card": card})
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with httpx.AsyncClient(base_url=coordinator.url, headers=headers) as client:
                started = await client.post(
                    "/v1/sagas", json={"definition": "ping", "input": {}, "key": "p-1"}
                )
                assert started.status_code == 201, started.text
            for key, status in (
                ("o-ok", "completed"),
                ("o-declined", "compensated"),
                ("o-broken", "failed"),
                ("p-1", "completed"),
            ):
                await made.wait_status(key, status)
            try:
                yield made
            finally:
                made.hold.set()

    return pytest.fixture(name=name)(shop)
