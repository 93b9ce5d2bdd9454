"""The console's pages and form posts over HTTP, on the real store and broker.

What a browser test would be slow to cover: status codes, headers, the answers of actions
the service does not offer, posts from another site, and the token cookie.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pymongo import AsyncMongoClient

import coordinator.console as console_package
from coordinator.adapters.rabbit import RabbitBroker
from coordinator.api import create_app
from coordinator.api.auth import parse_api_tokens
from coordinator.api.context import ApiContext
from coordinator.api.v1 import install_rest_api
from coordinator.console import install_console, pages
from tests.integration.test_api import ORDER_YAML, Api, make_api, rabbit, register, start

pytestmark = pytest.mark.integration

__all__ = ["rabbit"]

HTML = "text/html; charset=utf-8"


async def console(
    mongo: AsyncMongoClient[Any], database_name: str, rabbit: RabbitBroker, tokens: str | None
) -> AsyncIterator[tuple[Api, httpx.AsyncClient]]:
    async for api in make_api(mongo, database_name, rabbit, tokens=tokens):
        context = api.app.state.saga_api
        app = create_app(
            store=api.store,
            broker_open=lambda: True,
            install=[
                partial(install_rest_api, context=context),
                partial(install_console, context=context, counts=api.queries.in_flight),
            ],
        )
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            yield api, client


@pytest.fixture
async def open_console(
    mongo: AsyncMongoClient[Any], database_name: str, rabbit: RabbitBroker
) -> AsyncIterator[tuple[Api, httpx.AsyncClient]]:
    async for built in console(mongo, database_name, rabbit, None):
        yield built


@pytest.fixture
async def guarded(
    mongo: AsyncMongoClient[Any], database_name: str, rabbit: RabbitBroker
) -> AsyncIterator[tuple[Api, httpx.AsyncClient]]:
    async for built in console(mongo, database_name, rabbit, "w-secret:write,r-secret:read"):
        yield built


async def test_pages_answer_html_with_a_strict_policy(
    open_console: tuple[Api, httpx.AsyncClient],
) -> None:
    api, client = open_console
    assert (await register(api)).status_code == 201
    saga_id = (await start(api, "o-1")).json()["id"]
    for path in ("/ui", f"/ui/sagas/{saga_id}", "/ui/definitions", "/ui/definitions/order"):
        page = await client.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        assert page.headers["content-type"] == HTML
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    head = await client.head("/ui")
    assert head.status_code == 200 and head.content == b""
    listed = (await client.get("/ui", params={"status": "running"})).text
    assert "o-1" in listed and 'class="count s-running"' in listed
    live = await client.get(f"/ui/sagas/{saga_id}", headers={"HX-Request": "true"})
    assert live.text.lstrip().startswith('<div id="saga-live"')
    assert 'hx-swap-oob="true"' in live.text  # the graph's colours follow


async def test_bad_input_gets_a_page_that_says_so(
    open_console: tuple[Api, httpx.AsyncClient],
) -> None:
    _, client = open_console
    missing = await client.get("/ui/sagas/nope")
    assert missing.status_code == 404 and "No saga has the id" in missing.text
    assert (await client.get("/ui/definitions/nope")).status_code == 404
    odd = await client.get("/ui", params={"status": "sleeping", "cursor": "garbage"})
    assert odd.status_code == 200
    assert "Unknown status" in odd.text and "no longer valid" in odd.text


async def test_actions_the_service_lacks_say_so_and_change_nothing(
    open_console: tuple[Api, httpx.AsyncClient],
) -> None:
    api, client = open_console
    await register(api)
    saga_id = (await start(api, "o-2")).json()["id"]
    before = await api.store.load_saga(saga_id)
    event = await client.post(
        f"/ui/sagas/{saga_id}/events", data={"event": "payment.captured", "body": "{}"}
    )
    if not hasattr(api.service, "deliver_event"):
        assert event.status_code == 422 and "not available" in event.text
    bad_body = await client.post(
        f"/ui/sagas/{saga_id}/events", data={"event": "x", "body": "[1, 2"}
    )
    assert bad_body.status_code == 422 and "The body is not JSON" in bad_body.text
    no_reason = await client.post(f"/ui/sagas/{saga_id}/cancel", data={"reason": " "})
    assert no_reason.status_code == 422 and "needs a reason" in no_reason.text
    refused = await client.post(f"/ui/sagas/{saga_id}/retry")
    assert refused.status_code == 409 and "Refused" in refused.text
    retire = await client.post("/ui/definitions/order/retire")
    if not hasattr(api.service, "retire_definition"):
        assert retire.status_code == 501 and "not available" in retire.text
    after = await api.store.load_saga(saga_id)
    assert before is not None and after is not None and after.status == before.status


async def test_a_post_from_another_site_is_refused(
    open_console: tuple[Api, httpx.AsyncClient],
) -> None:
    api, client = open_console
    await register(api)
    saga_id = (await start(api, "o-3")).json()["id"]
    forged = await client.post(
        f"/ui/sagas/{saga_id}/cancel",
        data={"reason": "forged"},
        headers={"Origin": "http://elsewhere.test"},
    )
    assert forged.status_code == 403 and "another site" in forged.text
    same = await client.post(
        f"/ui/sagas/{saga_id}/cancel",
        data={"reason": "mine"},
        headers={"Origin": "http://console"},
    )
    assert same.status_code == 303
    assert same.headers["location"] == f"/ui/sagas/{saga_id}?done=cancel"
    state = await api.store.load_saga(saga_id)
    assert state is not None and state.status == "compensating"


async def test_tokens_sign_in_and_scopes(guarded: tuple[Api, httpx.AsyncClient]) -> None:
    api, client = guarded
    write = {"Authorization": "Bearer w-secret"}
    await api.client.post(
        "/v1/definitions",
        content=ORDER_YAML,
        headers={"content-type": "application/yaml", **write},
    )
    started = await api.client.post(
        "/v1/sagas", json={"definition": "order", "input": {"order_id": "o"}}, headers=write
    )
    saga_id = started.json()["id"]
    asked = await client.get("/ui")
    assert asked.status_code == 401 and "sign in" in asked.text
    anonymous = await client.post(f"/ui/sagas/{saga_id}/retry")
    assert anonymous.status_code == 401 and "needs a write token" in anonymous.text
    assert saga_id not in anonymous.text  # nothing of the saga shown to a stranger
    wrong = await client.post("/ui/signin", data={"token": "guess", "next": "/ui"})
    assert wrong.status_code == 401 and "not known" in wrong.text
    signed = await client.post("/ui/signin", data={"token": "r-secret", "next": "https://x.test"})
    assert signed.status_code == 303 and signed.headers["location"] == "/ui"
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    assert (await client.get("/ui")).status_code == 200
    retried = await client.post(f"/ui/sagas/{saga_id}/retry")
    assert retried.status_code == 403 and "may only read" in retried.text
    await client.post("/ui/signout")
    client.cookies.clear()
    assert (await client.post(f"/ui/sagas/{saga_id}/retry")).status_code == 401


async def test_pages_of_the_list_follow_the_keyset_cursor(
    open_console: tuple[Api, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, client = open_console
    monkeypatch.setattr(pages, "PAGE_SIZE", 2)
    await register(api)
    for n in range(3):
        await start(api, f"k-{n}")
    first = await client.get("/ui")
    assert [key for key in ("k-0", "k-1", "k-2") if f">{key}</a>" in first.text] == ["k-1", "k-2"]
    older = re.search(r'rel="next" href="([^"]+)"', first.text)
    assert older is not None
    second = await client.get(html.unescape(older.group(1)))
    assert ">k-0</a>" in second.text and ">k-1</a>" not in second.text
    assert 'rel="next"' not in second.text
    assert 'class="counts"' not in second.text  # counts on the first page only


def test_a_missing_htmx_is_said_in_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(console_package, "HTMX_PATH", tmp_path / "htmx.min.js")
    app = FastAPI()
    context = ApiContext(store=None, service=None, queries=None, tokens=parse_api_tokens(None))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="coordinator.console"):
        install_console(app, context)
    assert "without live refresh" in caplog.text and "scripts/bootstrap" in caplog.text
