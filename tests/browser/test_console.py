"""The console in a real browser, against a real coordinator, store and broker.

Clicks through what an operator does: filter the list, open a compensated saga and find
its compensation on the timeline, retry a failed saga and watch it resume to its end
without reloading, cancel a running one with a reason; and, with API tokens configured,
be asked to sign in and be refused an action with a read token.
"""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import Shop, shop_fixture

pytestmark = pytest.mark.integration

shop = shop_fixture("shop")
secured_shop = shop_fixture("secured_shop", "w-secret:write,r-secret:read")

WAIT = 30_000  # ms: generous, the machine may be loaded


def status_badge(page: Page) -> object:
    return page.locator("#saga-live .summary .badge")


async def open_saga(page: Page, shop: Shop, key: str) -> None:
    await page.goto(f"{shop.url}/ui?key={key}")
    await page.get_by_role("link", name=key, exact=True).click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text(key)


async def test_operator_clicks_through_the_console(page: Page, shop: Shop) -> None:
    # The list: every saga, counts by status, then filtered by definition and by status.
    await page.goto(f"{shop.url}/ui")
    rows = page.locator("table.sagas tbody tr")
    await expect(rows).to_have_count(5)
    await expect(page.locator("a.count.s-failed .n")).to_have_text("1")
    await page.get_by_role("combobox", name="Definition").select_option("ping")
    await page.get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("p-1")
    await page.get_by_role("combobox", name="Definition").select_option("shop")
    await page.get_by_role("combobox", name="Status").select_option("compensated")
    await page.get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("o-declined")

    # A compensated saga: the failed charge, then the reserve's compensation on the timeline.
    await rows.first.get_by_role("link", name="o-declined").click()
    await expect(status_badge(page)).to_have_text("compensated")
    timeline = page.locator("svg.timeline")
    await expect(timeline.locator("g.k-action.o-failed")).to_have_count(1)
    undo = timeline.locator("g.k-compensation.o-succeeded")
    await expect(undo).to_have_count(1)
    await expect(undo.locator("title")).to_have_text(re.compile(r"^reserve compensation #1"))
    await expect(page.locator(".reason-box")).to_contain_text("card_declined")
    await expect(page.locator("table.history")).to_contain_text("compensation.succeeded")

    # A failed saga (its compensation kept failing): mend the warehouse, retry, watch it end.
    await open_saga(page, shop, "o-broken")
    await expect(status_badge(page)).to_have_text("failed")
    # The reason keeps the first cause; the exhausted compensation is in the steps and history.
    await expect(page.locator(".reason-box")).to_contain_text("card_declined")
    await expect(page.locator("table.history")).to_contain_text("warehouse_offline")
    shop.broken.clear()
    await page.get_by_role("button", name="Retry").click()
    await expect(page.get_by_role("status")).to_contain_text("Retry requested")
    await expect(status_badge(page)).to_have_text("compensated", timeout=WAIT)  # no reload
    await expect(timeline.locator("g.k-compensation")).to_have_count(2)
    await expect(timeline.locator("g.marker.m-retried")).to_have_count(1)

    # A running saga: its charge is in flight; cancel it with a reason.
    await open_saga(page, shop, "o-hold")
    await expect(status_badge(page)).to_have_text("running")
    await expect(timeline.locator("g.o-in_flight")).to_have_count(1)
    await page.get_by_label("Cancel, with a reason").fill("customer called")
    await page.get_by_role("button", name="Cancel saga").click()
    await expect(page.get_by_role("status")).to_contain_text("Cancel requested")
    await expect(status_badge(page)).to_have_text("compensated", timeout=WAIT)
    await expect(page.locator("table.history")).to_contain_text("customer called")
    await expect(timeline.locator("g.marker.m-cancelled")).to_have_count(1)

    # A cancel of a saga that has ended is refused with the engine's reason.
    await page.get_by_label("Cancel, with a reason").fill("again")
    await page.get_by_role("button", name="Cancel saga").click()
    await expect(page.get_by_role("alert")).to_contain_text("Refused")


async def test_readable_and_usable_without_javascript(browser: Browser, shop: Shop) -> None:
    context = await browser.new_context(java_script_enabled=False)
    context.set_default_timeout(20_000)
    page = await context.new_page()
    try:
        await page.goto(f"{shop.url}/ui")
        await expect(page.locator("table.sagas tbody tr")).to_have_count(5)
        await open_saga(page, shop, "o-broken")
        await expect(status_badge(page)).to_have_text("failed")
        await expect(page.locator("svg.timeline g.bar").first).to_be_visible()
        shop.broken.clear()
        await page.get_by_role("button", name="Retry").click()  # a plain form post
        await expect(page.get_by_role("status")).to_contain_text("Retry requested")
        reload = page.get_by_role("link", name="Reload")
        for _ in range(60):  # no live refresh without JavaScript: the reload link
            if await status_badge(page).text_content() == "compensated":
                break
            await reload.click()
            await page.wait_for_timeout(500)
        await expect(status_badge(page)).to_have_text("compensated")
    finally:
        await context.close()


async def test_keyboard_reaches_the_actions(page: Page, shop: Shop) -> None:
    await open_saga(page, shop, "o-ok")
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    reason = page.get_by_label("Cancel, with a reason")
    for _ in range(60):
        await page.keyboard.press("Tab")
        if await reason.evaluate("element => element === document.activeElement"):
            break
    await expect(reason).to_be_focused()


async def test_tokens_guard_the_console(page: Page, secured_shop: Shop) -> None:
    url = secured_shop.url
    # Without a token: asked to sign in, and an action posted anyway is refused.
    await page.goto(f"{url}/ui")
    await expect(page.get_by_role("alert")).to_contain_text("sign in")
    saga_id = await secured_shop.saga_id("o-broken")
    refused = await page.request.post(f"{url}/ui/sagas/{saga_id}/retry")
    assert refused.status == 401
    assert "needs a write token" in await refused.text()

    # A read token reads, and is refused the retry with a clear message.
    await page.get_by_label("API token").fill("r-secret")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("table.sagas tbody tr")).to_have_count(5)
    await open_saga(page, secured_shop, "o-broken")
    await page.get_by_role("button", name="Retry").click()
    await expect(page.get_by_role("alert")).to_contain_text("may only read")
    await expect(status_badge(page)).to_have_text("failed")

    # A write token may act.
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_label("API token").fill("w-secret")
    await page.get_by_role("button", name="Sign in").click()
    await open_saga(page, secured_shop, "o-broken")
    secured_shop.broken.clear()
    await page.get_by_role("button", name="Retry").click()
    await expect(status_badge(page)).to_have_text("compensated", timeout=WAIT)
