"""Screenshots of the console's pages for the docs: ``scripts/screenshots`` runs this with
``SAGA_SCREENSHOTS_DIR=docs``; otherwise it is skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.browser.conftest import Shop, shop_fixture

pytestmark = pytest.mark.integration

shop = shop_fixture("shop")
OUT = os.environ.get("SAGA_SCREENSHOTS_DIR")


@pytest.mark.skipif(not OUT, reason="set SAGA_SCREENSHOTS_DIR (scripts/screenshots) to write them")
async def test_screenshots(page: Page, shop: Shop) -> None:
    assert OUT is not None
    out = Path(OUT)
    await page.set_viewport_size({"width": 1600, "height": 900})
    await page.goto(f"{shop.url}/ui")
    await expect(page.locator("table.sagas tbody tr")).to_have_count(5)
    await page.screenshot(path=out / "console-sagas.png", full_page=True)

    await page.goto(f"{shop.url}/ui/sagas/{await shop.saga_id('o-broken')}")
    await expect(page.locator("#saga-live .summary .badge")).to_have_text("failed")
    await page.screenshot(path=out / "console-saga.png", full_page=True)
    timeline = page.locator("section").filter(has=page.locator("svg.timeline"))
    await timeline.screenshot(path=out / "console-timeline.png")

    await page.goto(f"{shop.url}/ui/definitions/shop")
    await page.screenshot(path=out / "console-definition.png", full_page=True)
