# ruff: noqa: F811 - the fixtures imported from test_api are requested by name
"""Hostile REST bodies get a located 422, never a 500 or a 503 that never ends; the
OpenAPI is true to the mode the service runs in; an open API beyond loopback is refused.

Against the real app, MongoDB (SecantusDB) and RabbitMQ (the fixtures of ``test_api``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from coordinator.adapters.rabbit import RabbitBroker
from tests.integration.helpers import Coordinator
from tests.integration.test_api import (  # noqa: F401 - api and rabbit are fixtures
    Api,
    api,
    assert_problem,
    make_api,
    rabbit,
    register,
)

pytestmark = pytest.mark.integration


async def post_json(api: Api, path: str, text: str) -> Any:
    return await api.client.post(
        path, content=text.encode("utf-8"), headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ('{"definition": "order", "input": [1]}', "input", "dictionary"),
        ('{"definition": "order", "input": "text"}', "input", "dictionary"),
        ('{"definition": "order", "input": {"n": 1' + "0" * 25 + "}}", "input.n", "8 bytes"),
        ('{"definition": "order", "input": {"n": 9' + "9" * 4400 + "}}", "input.n", "8 bytes"),
        ('{"definition": "order", "input": {"xs": [1, 2e400]}}', "input.xs.1", "not finite"),
        ('{"definition": "order", "version": 1' + "0" * 30 + ', "input": {}}', "version", "8"),
        ('{"definition": "order", "input": {"s": "\\ud8d1"}}', "input.s", "lone surrogate"),
        ('{"definition": "order", "key": "\\udfff", "input": {}}', "key", "lone surrogate"),
        ('{"definition": "order", "input": {"a\\u0000b": 1}}', "input.a\x00b", "NUL"),
        ('{"definition": "order", "input": ' + "[" * 100 + "]" * 100 + "}", None, "nested"),
        (
            '{"definition": "order", "input": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}",
            None,
            "nested",
        ),
    ],
    ids=lambda value: str(value)[:40],
)
async def test_a_start_with_what_cannot_be_stored_is_a_located_422(
    api: Api, body: str, field: str | None, message: str
) -> None:
    await register(api)
    problem = assert_problem(await post_json(api, "/v1/sagas", body), 422)
    if field is not None:
        fields = [error["field"] for error in problem["errors"]]
        assert field in fields or field.split(".")[0] in fields, problem
    assert message in str(problem["errors"]), problem
    assert (await api.client.get("/v1/sagas")).json()["items"] == []


async def test_huge_numbers_elsewhere_are_located_422s(api: Api) -> None:
    await register(api)
    huge = "9" * 40
    path = await api.client.get(f"/v1/definitions/order/versions/{huge}")
    assert_problem(path, 422)
    cancel = await post_json(api, "/v1/sagas/x/cancel", '{"reason": "\\ud800"}')
    assert_problem(cancel, 422)
    listing = await api.client.get(f"/v1/sagas?limit={huge}")
    assert_problem(listing, 422)


async def test_a_definition_with_a_value_out_of_range_is_422_not_500(api: Api) -> None:
    text = (
        '{"name": "a", "version": 1, "steps": [{"name": "s", "participant": "p", '
        '"command": "c", "retry": {"max_backoff": "483711487314h"}}]}'
    )
    problem = assert_problem(await post_json(api, "/v1/definitions", text), 422)
    assert problem["errors"]


async def test_yaml_escapes_that_make_lone_surrogates_are_a_located_422(api: Api) -> None:
    text = (
        'name: a\nversion: 1\ndescription: "\\ud990\\ude4d"\n'
        "steps:\n  - {name: s, participant: p, command: c}\n"
    )
    response = await api.client.post(
        "/v1/definitions", content=text, headers={"content-type": "application/yaml"}
    )
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["field"] == "description", problem
    in_a_key = (
        '{"name": "a", "version": 1, "steps": [{"name": "s", "participant": "p", '
        '"command": "c", "input": {"k\\uda32\\udf27": 1}}]}'
    )
    problem = assert_problem(await post_json(api, "/v1/definitions", in_a_key), 422)
    assert "lone surrogate" in str(problem["errors"]), problem


async def test_a_version_must_be_a_number_not_true(api: Api) -> None:
    await register(api)
    response = await post_json(
        api, "/v1/sagas", '{"definition": "order", "version": true, "input": {}}'
    )
    assert assert_problem(response, 422)["errors"][0]["field"] == "version"


async def test_405_names_every_method_of_the_path(api: Api) -> None:
    response = await api.client.request("OPTIONS", "/v1/sagas")
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET, HEAD, POST"


async def test_an_input_mongodb_refuses_is_422_not_503(api: Api) -> None:
    await register(api)
    response = await post_json(api, "/v1/sagas", '{"definition": "order", "input": {"$a": 1}}')
    # MongoDB refuses some keys that start with "$"; a server that stores them answers 201.
    assert response.status_code in (201, 422), response.text


async def test_the_openapi_asks_for_tokens_only_when_they_are_configured(
    api: Api, mongo: AsyncMongoClient[Any], database_name: str, rabbit: RabbitBroker
) -> None:
    open_schema = (await api.client.get("/openapi.json")).json()
    start = open_schema["paths"]["/v1/sagas"]["post"]
    assert "security" not in start
    assert "401" not in start["responses"] and "403" not in start["responses"]
    assert "securitySchemes" not in open_schema.get("components", {})
    assert {"400", "404", "415", "422", "500", "503"} <= start["responses"].keys()
    async for secured in make_api(mongo, database_name, rabbit, tokens="t:write"):
        schema = (await secured.client.get("/openapi.json")).json()
        start = schema["paths"]["/v1/sagas"]["post"]
        assert start["security"]
        assert {"401", "403"} <= start["responses"].keys()
        assert schema["components"]["securitySchemes"]


async def test_an_open_api_beyond_loopback_refuses_to_start(
    coordinators: Callable[..., Coordinator],
) -> None:
    coordinator = coordinators(SAGA_HTTP_HOST="0.0.0.0").start()
    assert coordinator.proc is not None
    for _ in range(300):
        if coordinator.proc.poll() is not None:
            break
        await asyncio.sleep(0.1)
    assert coordinator.proc.returncode == 1, coordinator.log()[-2000:]
    assert "SAGA_API_ALLOW_ANONYMOUS=true" in coordinator.log()
