# ruff: noqa: F811 - the fixtures imported from test_api are requested by name
"""``POST /v1/definitions/{name}/retire``, and stored definitions that no longer load,
against the real app, MongoDB (SecantusDB) and RabbitMQ (the fixtures of ``test_api``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from coordinator.adapters.rabbit import RabbitBroker
from tests.integration.test_api import (  # noqa: F401 - api and rabbit are fixtures
    ORDER_YAML,
    Api,
    api,
    assert_problem,
    rabbit,
    register,
    start,
)

pytestmark = pytest.mark.integration


async def test_retire_removes_the_binding_and_a_new_version_restores_it(
    api: Api, rabbit: RabbitBroker
) -> None:
    assert (await register(api)).status_code == 201
    started = await start(api, key="before")
    assert started.status_code == 201
    assert "order.placed" in rabbit._bound

    retired = await api.client.post("/v1/definitions/order/retire")
    assert retired.status_code == 200, retired.text
    assert retired.json()["retired"] is True
    assert "order.placed" not in rabbit._bound
    assert await api.service.on_event("order.placed", {"order_id": "o-9"}, None, None) == 0
    listed = (await api.client.get("/v1/definitions")).json()["items"]
    assert [item["retired"] for item in listed] == [True]
    running = await api.client.get(f"/v1/sagas/{started.json()['id']}")
    assert running.json()["status"] == "running"  # running sagas go on

    assert_problem(await api.client.post("/v1/definitions/ghost/retire"), 404)

    v2 = await register(api, ORDER_YAML.replace("version: 1", "version: 2"))
    assert v2.status_code == 201 and v2.json()["retired"] is False
    assert "order.placed" in rabbit._bound
    assert await api.service.on_event("order.placed", {"order_id": "o-9"}, None, None) == 1


async def test_a_definition_that_loses_its_trigger_loses_its_binding(
    api: Api, rabbit: RabbitBroker
) -> None:
    await register(api)
    assert "order.placed" in rabbit._bound
    without = ORDER_YAML.replace("version: 1", "version: 2")
    without = without.replace("trigger:\n  event: order.placed\n  key: ${event.order_id}\n", "")
    assert (await register(api, without)).status_code == 201
    assert "order.placed" not in rabbit._bound


async def test_a_stored_definition_that_no_longer_loads_never_stops_the_others(
    api: Api, mongo: AsyncMongoClient[Any], database_name: str
) -> None:
    await register(api)
    bad = {
        "name": "bad",
        "version": 1,
        "steps": [{"name": "a", "participant": "p", "command": "c", "timeout": "-1s"}],
    }
    await mongo[database_name]["definitions"].insert_one(
        {
            "_id": "bad@1",
            "name": "bad",
            "version": 1,
            "content_hash": "x",
            "source": "…",
            "definition": bad,
            "registered_at": datetime.now(UTC),
        }
    )
    assert await api.service.refresh_definitions() == {"order.placed"}
    listed = await api.client.get("/v1/definitions")
    assert listed.status_code == 200
    assert [item["name"] for item in listed.json()["items"]] == ["order"]
    started = await api.client.post("/v1/sagas", json={"definition": "bad", "input": {}})
    problem = assert_problem(started, 409)
    assert "'bad' version 1 does not load" in problem["detail"]
    assert_problem(await api.client.get("/v1/definitions/bad"), 409)
    assert (await start(api, key="still")).status_code == 201
