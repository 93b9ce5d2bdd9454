"""``POST /v1/sagas/{id}/events`` and the saga view of groups, conditions and waits, against
the real app, MongoDB (SecantusDB) and RabbitMQ (the fixtures of ``test_api``)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_api import Api, api, assert_problem, rabbit, register

pytestmark = pytest.mark.integration

__all__ = ["api", "rabbit"]  # the fixtures

TRIP_YAML = """\
name: trip
version: 1
steps:
  - name: book
    parallel:
      flight:
        - name: book-flight
          participant: flights
          command: book
      hotel:
        - name: book-hotel
          participant: hotels
          command: book
        - name: add-breakfast
          when: has(input.breakfast)
          participant: hotels
          command: add_breakfast
  - name: approval
    await:
      event: trip.approved
      match: ${event.trip_id}
      equals: ${input.trip_id}
"""


async def waiting_trip(api: Api) -> dict[str, Any]:
    assert (await register(api, TRIP_YAML)).status_code == 201
    started = await api.client.post(
        "/v1/sagas", json={"definition": "trip", "input": {"trip_id": "t-1"}}
    )
    saga: dict[str, Any] = started.json()
    await api.reply(saga["id"], "book-flight")
    await api.reply(saga["id"], "book-hotel")
    return saga


async def test_the_view_shows_groups_conditions_and_what_a_step_waits_for(api: Api) -> None:
    saga = await waiting_trip(api)
    view = (await api.client.get(f"/v1/sagas/{saga['id']}")).json()
    steps = {step["name"]: step for step in view["steps"]}
    assert (steps["book-flight"]["group"], steps["book-flight"]["branch"]) == ("book", "flight")
    assert (steps["add-breakfast"]["group"], steps["add-breakfast"]["branch"]) == ("book", "hotel")
    assert steps["add-breakfast"]["status"] == "skipped"
    assert steps["add-breakfast"]["condition"] is False
    assert steps["book-flight"]["condition"] is None  # no `when`
    waiting = steps["approval"]
    assert waiting["status"] == "waiting" and waiting["group"] is None
    assert waiting["awaiting"]["event"] == "trip.approved"
    assert waiting["awaiting"]["value"] == "t-1"
    assert waiting["awaiting"]["since"]


async def test_an_event_over_rest_completes_the_waiting_step(api: Api) -> None:
    saga = await waiting_trip(api)
    path = f"/v1/sagas/{saga['id']}/events"
    body = {"trip_id": "t-1", "approved_by": "ana"}
    response = await api.client.post(path, json={"event": "trip.approved", "body": body})
    assert response.status_code == 202, response.text
    view = response.json()
    assert view["status"] == "completed"
    approval = next(step for step in view["steps"] if step["name"] == "approval")
    assert approval["output"] == body and approval["awaiting"] is None
    again = await api.client.post(path, json={"event": "trip.approved", "body": body})
    assert "no step of this saga is waiting" in assert_problem(again, 409)["detail"]


async def test_rest_event_errors(api: Api) -> None:
    saga = await waiting_trip(api)
    path = f"/v1/sagas/{saga['id']}/events"
    other = await api.client.post(path, json={"event": "trip.rejected", "body": {"trip_id": "t-1"}})
    assert "'trip.rejected'" in assert_problem(other, 409)["detail"]
    wrong = await api.client.post(path, json={"event": "trip.approved", "body": {"trip_id": "t-2"}})
    assert "'t-1'" in assert_problem(wrong, 409)["detail"]
    unknown = await api.client.post(
        "/v1/sagas/ghost/events", json={"event": "trip.approved", "body": {}}
    )
    assert_problem(unknown, 404)
    not_object = await api.client.post(path, json={"event": "trip.approved", "body": [1]})
    assert assert_problem(not_object, 422)["errors"][0]["field"] == "body"
    no_type = await api.client.post(path, json={"body": {}})
    assert assert_problem(no_type, 422)["errors"][0]["field"] == "event"
    view = (await api.client.get(f"/v1/sagas/{saga['id']}")).json()
    assert view["status"] == "running"  # nothing changed
