"""The REST API (SPEC §5) against the real app, MongoDB (SecantusDB) and RabbitMQ.

Every test builds the app the way ``coordinator.app`` does: ``create_app`` with
``install_rest_api``, over a ``MongoSagaStore`` on a fresh database, a ``RabbitBroker`` under a
fresh exchange prefix, and the real ``SagaService``. Replies that drive a saga to a given
state (past the pivot, failed) are fed to ``SagaService.on_reply`` as the reply consumer
would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aio_pika
import httpx
import pytest
from fastapi import FastAPI
from pymongo import AsyncMongoClient

from coordinator.adapters.mongo import MongoSagaStore
from coordinator.adapters.queries import SagaQueries
from coordinator.adapters.rabbit import RabbitBroker
from coordinator.api import create_app
from coordinator.api.auth import parse_api_tokens
from coordinator.api.context import ApiContext
from coordinator.api.v1 import install_rest_api
from coordinator.engine.engine import Options
from coordinator.engine.messages import ReplyReceived
from coordinator.service import SagaService
from schemas.envelope import FailedReply, Kind, ReplyError, SucceededReply

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"

ORDER_YAML = """\
name: order
version: 1
description: Reserve, then ship.
trigger:
  event: order.placed
  key: ${event.order_id}
steps:
  - name: reserve
    participant: inventory
    command: reserve
    input: {order_id: "${input.order_id}"}
    compensation:
      command: release
      retry: {max_attempts: 1}
  - name: charge
    participant: payments
    command: charge
    retry: {max_attempts: 1}
  - name: ship
    participant: shipping
    command: ship
    pivot: true
  - name: notify
    participant: mail
    command: notify
"""

BAD_YAML = """\
name: Bad Name
version: 0
steps:
  - name: a
    participant: p
    command: c
    timeout: forever
    colour: blue
"""


@dataclass
class Api:
    client: httpx.AsyncClient
    app: FastAPI
    store: MongoSagaStore
    service: SagaService
    queries: SagaQueries

    async def reply(
        self,
        saga_id: str,
        step: str,
        *,
        ok: bool = True,
        kind: Kind = "action",
        attempt: int = 1,
    ) -> None:
        body = (
            SucceededReply(status="succeeded", output={"done": step})
            if ok
            else FailedReply(status="failed", error=ReplyError(code="no", retryable=False))
        )
        await self.service.on_reply(
            saga_id,
            ReplyReceived(step=step, kind=kind, attempt=attempt, reply=body, at=now()),
        )


def now() -> datetime:
    return datetime.now(UTC)


async def make_api(
    mongo: AsyncMongoClient[Any],
    database_name: str,
    rabbit: RabbitBroker,
    *,
    tokens: str | None = None,
    max_body_bytes: int = 1024 * 1024,
) -> AsyncIterator[Api]:
    store = MongoSagaStore(mongo, database_name)
    queries = SagaQueries(mongo, database_name)
    await store.ensure_indexes()
    await queries.ensure_indexes()
    service = SagaService(
        store,
        rabbit,
        options=Options(),
        clock=now,
        random=lambda: 0.5,
        new_id=lambda: uuid.uuid4().hex,
        trigger_binder=rabbit.bind_events,
    )
    context = ApiContext(
        store=store, service=service, queries=queries, tokens=parse_api_tokens(tokens)
    )
    app = create_app(
        store=store,
        broker_open=lambda: rabbit.is_open,
        install=[partial(install_rest_api, context=context, max_body_bytes=max_body_bytes)],
    )
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield Api(client, app, store, service, queries)


@pytest.fixture
async def rabbit(amqp_url: str, prefix: str) -> AsyncIterator[RabbitBroker]:
    broker = RabbitBroker(amqp_url, prefix=prefix)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()
        await _delete_topology(amqp_url, broker)


async def _delete_topology(amqp_url: str, broker: RabbitBroker) -> None:
    """Quorum queues are heavy: leave none behind per test."""
    names = broker.names
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchanges = names.exchanges
        for queue in (
            names.events_queue,
            names.replies_queue,
            names.dead_letter_queue,
            exchanges.unrouted,
        ):
            await channel.queue_delete(queue)
        for exchange in (
            exchanges.events,
            exchanges.commands,
            exchanges.replies,
            exchanges.unrouted,
        ):
            await channel.exchange_delete(exchange)
        await channel.exchange_delete(exchanges.dead_letter)


@pytest.fixture
async def api(
    mongo: AsyncMongoClient[Any], database_name: str, rabbit: RabbitBroker
) -> AsyncIterator[Api]:
    async for built in make_api(mongo, database_name, rabbit):
        yield built


async def register(api: Api, text: str = ORDER_YAML) -> httpx.Response:
    return await api.client.post(
        "/v1/definitions", content=text, headers={"content-type": "application/yaml"}
    )


async def start(api: Api, key: str | None = None, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"definition": "order", "input": {"order_id": key or "o"}, **extra}
    if key is not None:
        body["key"] = key
    return await api.client.post("/v1/sagas", json=body)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert {"type", "title", "detail", "instance"} <= problem.keys()
    return problem


# -- definitions ------------------------------------------------------------------------
async def test_register_yaml_then_identical_then_conflict(api: Api) -> None:
    created = await register(api)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/v1/definitions/order/versions/1"
    body = created.json()
    assert (body["name"], body["version"], body["trigger_event"]) == ("order", 1, "order.placed")
    assert body["source"] == ORDER_YAML
    assert body["definition"]["steps"][0]["compensation"]["command"] == "release"

    again = await register(api)
    assert again.status_code == 200
    assert again.json()["content_hash"] == body["content_hash"]

    other = await register(api, ORDER_YAML.replace("Reserve, then ship.", "Changed."))
    problem = assert_problem(other, 409)
    assert "version 2" in problem["detail"]


async def test_register_binds_the_trigger_event(api: Api, rabbit: RabbitBroker) -> None:
    assert (await register(api)).status_code == 201
    assert "order.placed" in rabbit._bound


@pytest.mark.parametrize("media", ["text/yaml", "application/x-yaml; charset=utf-8"])
async def test_register_accepts_every_yaml_type(api: Api, media: str) -> None:
    response = await api.client.post(
        "/v1/definitions", content=ORDER_YAML, headers={"content-type": media}
    )
    assert response.status_code == 201, response.text


async def test_register_json(api: Api) -> None:
    definition = {
        "name": "refund",
        "version": 3,
        "steps": [{"name": "pay", "participant": "payments", "command": "refund"}],
    }
    response = await api.client.post("/v1/definitions", json=definition)
    assert response.status_code == 201, response.text
    assert response.json()["definition"]["steps"][0]["command"] == "refund"


async def test_register_invalid_lists_every_located_error(api: Api) -> None:
    problem = assert_problem(await register(api, BAD_YAML), 422)
    errors = problem["errors"]
    fields = {error["field"] for error in errors}
    assert {"name", "version", "steps[0].timeout", "steps[0].colour"} <= fields
    assert all(isinstance(error["line"], int) and error["message"] for error in errors)
    by_field = {error["field"]: error["line"] for error in errors}
    assert by_field["name"] == 1 and by_field["steps[0].timeout"] == 7


async def test_register_malformed_json_is_located(api: Api) -> None:
    response = await api.client.post(
        "/v1/definitions",
        content=b'{"name": "x",\n "version": }',
        headers={"content-type": "application/json"},
    )
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["line"] == 2


async def test_register_other_media_type_is_415(api: Api) -> None:
    response = await api.client.post(
        "/v1/definitions", content=ORDER_YAML, headers={"content-type": "text/plain"}
    )
    assert_problem(response, 415)
    assert "application/yaml" in response.headers["accept-post"]


async def test_read_definitions(api: Api) -> None:
    await register(api)
    await register(api, ORDER_YAML.replace("version: 1", "version: 2"))
    latest = (await api.client.get("/v1/definitions")).json()["items"]
    assert [(d["name"], d["version"]) for d in latest] == [("order", 2)]
    one = await api.client.get("/v1/definitions/order")
    assert one.json()["version"] == 2
    versions = (await api.client.get("/v1/definitions/order/versions")).json()["items"]
    assert [d["version"] for d in versions] == [1, 2]
    first = await api.client.get("/v1/definitions/order/versions/1")
    assert first.json()["version"] == 1
    assert_problem(await api.client.get("/v1/definitions/nope"), 404)
    assert_problem(await api.client.get("/v1/definitions/nope/versions"), 404)
    assert_problem(await api.client.get("/v1/definitions/order/versions/9"), 404)
    assert_problem(await api.client.get("/v1/definitions/order/versions/zero"), 422)


# -- sagas ------------------------------------------------------------------------------
async def test_start_then_read(api: Api) -> None:
    await register(api)
    created = await start(api, key="k-1")
    assert created.status_code == 201, created.text
    saga = created.json()
    assert created.headers["location"] == f"/v1/sagas/{saga['id']}"
    assert (saga["definition"], saga["version"], saga["key"]) == ("order", 1, "k-1")
    assert saga["status"] == "running"
    assert saga["input"] == {"order_id": "k-1"}
    first = saga["steps"][0]
    assert (first["name"], first["status"], first["attempts"]) == ("reserve", "running", 1)
    assert first["started_at"] and first["compensation"] is None

    again = await start(api, key="k-1")
    assert again.status_code == 200
    assert again.json()["id"] == saga["id"]

    read = (await api.client.get(f"/v1/sagas/{saga['id']}")).json()
    assert read["id"] == saga["id"] and read["created_at"] and read["updated_at"]
    assert {"deadline", "reason", "steps"} <= read.keys()


async def test_start_errors(api: Api) -> None:
    await register(api)
    problem = assert_problem(await api.client.post("/v1/sagas", json={"input": {}}), 422)
    assert problem["errors"][0]["field"] == "definition"
    assert problem["errors"][0]["location"] == "body"
    assert_problem(
        await api.client.post("/v1/sagas", json={"definition": "ghost", "input": {}}), 404
    )
    assert_problem(await start(api, version=7), 404)
    bad = assert_problem(await start(api, version=0), 422)
    assert bad["errors"][0] == {
        "field": "version",
        "location": "body",
        "message": "Input should be greater than or equal to 1",
        "value": 0,
    }
    malformed = await api.client.post(
        "/v1/sagas", content=b'{"definition": ', headers={"content-type": "application/json"}
    )
    assert_problem(malformed, 400)
    as_text = await api.client.post(
        "/v1/sagas", content=b"{}", headers={"content-type": "text/plain"}
    )
    assert_problem(as_text, 415)
    binary = await api.client.post(
        "/v1/sagas/x/cancel", content=b"\xff", headers={"content-type": "application/json"}
    )
    assert_problem(binary, 400)


async def test_history_oldest_first(api: Api) -> None:
    await register(api)
    saga_id = (await start(api)).json()["id"]
    await api.reply(saga_id, "reserve")
    history = (await api.client.get(f"/v1/sagas/{saga_id}/history")).json()
    assert history["saga_id"] == saga_id
    times = [entry["at"] for entry in history["items"]]
    assert times == sorted(times) and len(times) >= 2
    assert history["items"][0]["event"].startswith("saga.")
    assert_problem(await api.client.get("/v1/sagas/nope/history"), 404)
    assert_problem(await api.client.get("/v1/sagas/nope"), 404)


async def test_cancel(api: Api) -> None:
    await register(api)
    saga_id = (await start(api)).json()["id"]
    assert_problem(await api.client.post(f"/v1/sagas/{saga_id}/cancel", json={}), 422)
    cancelled = await api.client.post(f"/v1/sagas/{saga_id}/cancel", json={"reason": "oops"})
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "compensating"
    assert_problem(await api.client.post("/v1/sagas/nope/cancel", json={"reason": "x"}), 404)


async def test_cancel_past_the_pivot_is_409(api: Api) -> None:
    await register(api)
    saga_id = (await start(api)).json()["id"]
    for step in ("reserve", "charge", "ship"):
        await api.reply(saga_id, step)
    problem = assert_problem(
        await api.client.post(f"/v1/sagas/{saga_id}/cancel", json={"reason": "late"}), 409
    )
    assert problem["detail"]


async def test_cancel_terminal_is_409(api: Api) -> None:
    await register(api)
    saga_id = (await start(api)).json()["id"]
    for step in ("reserve", "charge", "ship", "notify"):
        await api.reply(saga_id, step)
    assert (await api.client.get(f"/v1/sagas/{saga_id}")).json()["status"] == "completed"
    assert_problem(
        await api.client.post(f"/v1/sagas/{saga_id}/cancel", json={"reason": "late"}), 409
    )


async def test_retry(api: Api) -> None:
    await register(api)
    saga_id = (await start(api)).json()["id"]
    assert_problem(await api.client.post(f"/v1/sagas/{saga_id}/retry"), 409)  # running
    await api.reply(saga_id, "reserve")
    await api.reply(saga_id, "charge", ok=False)  # compensate reserve
    await api.reply(saga_id, "reserve", ok=False, kind="compensation")  # exhausted
    failed = (await api.client.get(f"/v1/sagas/{saga_id}")).json()
    assert failed["status"] == "failed"
    assert failed["steps"][0]["compensation"]["error"]["code"] == "no"
    retried = await api.client.post(f"/v1/sagas/{saga_id}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "compensating"
    assert retried.json()["steps"][0]["compensation"]["attempts"] == 2
    assert_problem(await api.client.post("/v1/sagas/nope/retry"), 404)


# -- listing ----------------------------------------------------------------------------
async def test_list_filters_and_limit(api: Api) -> None:
    await register(api)
    ids = [(await start(api, key=f"k{i}")).json()["id"] for i in range(3)]
    await api.client.post(f"/v1/sagas/{ids[0]}/cancel", json={"reason": "x"})
    page = (await api.client.get("/v1/sagas")).json()
    assert [item["id"] for item in page["items"]] == ids[::-1]
    assert page["next_cursor"] is None
    assert {"input", "steps"}.isdisjoint(page["items"][0])
    by_status = (await api.client.get("/v1/sagas", params={"status": "compensating"})).json()
    assert [item["id"] for item in by_status["items"]] == [ids[0]]
    by_key = (await api.client.get("/v1/sagas", params={"key": "k1"})).json()
    assert [item["id"] for item in by_key["items"]] == [ids[1]]
    none = (await api.client.get("/v1/sagas", params={"definition": "other"})).json()
    assert none == {"items": [], "next_cursor": None}
    two = (await api.client.get("/v1/sagas", params={"limit": 2})).json()
    assert len(two["items"]) == 2 and two["next_cursor"]
    rest = await api.client.get("/v1/sagas", params={"limit": 2, "cursor": two["next_cursor"]})
    assert [item["id"] for item in rest.json()["items"]] == [ids[0]]
    filtered = {"limit": 2, "cursor": two["next_cursor"], "definition": "order", "key": "k0"}
    assert [
        i["id"] for i in (await api.client.get("/v1/sagas", params=filtered)).json()["items"]
    ] == [ids[0]]
    for params in ({"limit": 0}, {"limit": 501}, {"status": "odd"}, {"cursor": "garbage"}):
        problem = assert_problem(await api.client.get("/v1/sagas", params=params), 422)
        assert problem["errors"][0]["location"] == "query"


async def test_pagination_under_concurrent_inserts(api: Api) -> None:
    await register(api)
    before = {(await start(api, key=f"old-{i}")).json()["id"] for i in range(45)}
    # Sagas sharing one created_at: only the _id tie-break keeps the pages apart.
    model = await api.store.load_saga(next(iter(before)))
    assert model is not None
    for i in range(10):
        twin = model.model_copy(update={"id": f"twin-{i:02d}", "key": None})
        await api.store.insert_saga(twin)
        before.add(twin.id)
    seen: list[str] = []
    cursor: str | None = None
    counter = 0

    async def insert_some() -> None:
        nonlocal counter
        for _ in range(3):
            counter += 1
            assert (await start(api, key=f"new-{counter}")).status_code == 201

    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        page, _ = await asyncio.gather(api.client.get("/v1/sagas", params=params), insert_some())
        body = page.json()
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "a saga was listed twice"
    assert before <= set(seen), "a saga that existed before paging was skipped"
    assert counter > 30


# -- HTTP shape, auth and limits ----------------------------------------------------------
async def test_unknown_route_method_and_crash_are_problems(api: Api) -> None:
    assert_problem(await api.client.get("/v1/nothing-here"), 404)
    not_allowed = await api.client.delete("/v1/definitions")
    assert_problem(not_allowed, 405)
    assert "GET" in not_allowed.headers["allow"]

    @api.app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    crashed = assert_problem(await api.client.get("/v1/boom"), 500)
    assert "secret" not in crashed["detail"]


async def test_head_answers_like_get_without_the_body(api: Api) -> None:
    await register(api)
    saga = (await start(api, key="k-head")).json()
    for path in ("/healthz", "/v1/definitions", f"/v1/sagas/{saga['id']}", "/v1/sagas?limit=1"):
        got, head = await api.client.get(path), await api.client.head(path)
        assert got.status_code == head.status_code == 200, (path, head.status_code)
        assert head.content == b"" and got.content
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["content-length"] == str(len(got.content))
    missing = await api.client.head("/v1/sagas/nope")
    assert missing.status_code == 404 and missing.content == b""
    assert (await api.client.head("/v1/sagas/nope/cancel")).status_code == 405


async def test_openapi_and_docs(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    assert {"/v1/sagas", "/v1/sagas/{saga_id}/cancel", "/v1/definitions"} <= schema["paths"].keys()
    docs = await api.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_body_limit(
    mongo: AsyncMongoClient[Any], database_name: str, rabbit: RabbitBroker
) -> None:
    async for small in make_api(mongo, database_name, rabbit, max_body_bytes=100):
        declared = await register(small)  # httpx sends Content-Length
        assert_problem(declared, 413)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 50

        streamed = await small.client.post(
            "/v1/definitions", content=chunks(), headers={"content-type": "application/yaml"}
        )
        assert_problem(streamed, 413)
        fits = await small.client.post("/v1/sagas/x/cancel", json={"reason": "short"})
        assert_problem(fits, 404)


async def test_tokens(
    mongo: AsyncMongoClient[Any], database_name: str, rabbit: RabbitBroker
) -> None:
    async for secured in make_api(
        mongo, database_name, rabbit, tokens="ops-token:write,dash-token:read,ci-token"
    ):
        client = secured.client
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic x"}):
            problem = assert_problem(await client.get("/v1/sagas", headers=headers), 401)
            assert problem["title"] == "Unauthorized"
        missing = await client.get("/v1/sagas")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        # The token is checked first: no validation detail leaks to an unknown caller.
        garbled = await client.post(
            "/v1/sagas", content=b"{", headers={"content-type": "application/json"}
        )
        assert_problem(garbled, 401)
        read = {"authorization": "Bearer dash-token"}
        assert (await client.get("/v1/sagas", headers=read)).status_code == 200
        assert_problem(
            await client.post(
                "/v1/definitions",
                content=ORDER_YAML,
                headers={**read, "content-type": "application/yaml"},
            ),
            403,
        )
        for token in ("ops-token", "ci-token"):
            written = await client.post(
                "/v1/definitions",
                content=ORDER_YAML,
                headers={"authorization": f"Bearer {token}", "content-type": "application/yaml"},
            )
            assert written.status_code in (200, 201), written.text
        assert (await client.get("/healthz")).status_code == 200  # outside /v1


async def test_open_without_tokens(api: Api) -> None:
    assert (await api.client.get("/v1/definitions")).status_code == 200
    assert (await api.client.post("/v1/sagas/x/retry")).status_code == 404
