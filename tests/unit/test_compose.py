"""compose.yaml stays true to the code: it parses, and what it names exists."""

from __future__ import annotations

import importlib.util
from typing import Any

import yaml

from coordinator.settings import CoordinatorSettings
from tests.conftest import ROOT


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_every_participant_service_runs_an_existing_example_module() -> None:
    services = _compose()["services"]
    modules = [
        service["command"][0]
        for service in services.values()
        if service.get("entrypoint") == ["python", "-m"]
    ]
    assert sorted(modules) == [
        f"participants.examples.{name}"
        for name in ("flights", "hotels", "inventory", "payments", "shipping")
    ]
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def test_coordinator_environment_names_real_settings() -> None:
    coordinator = _compose()["services"]["coordinator"]
    fields = set(CoordinatorSettings.model_fields)
    for name in coordinator["environment"]:
        assert name.startswith("SAGA_"), name
        assert name.removeprefix("SAGA_").lower() in fields, name
    assert coordinator["command"] == ["run"]
    assert coordinator["volumes"] == ["./schemas:/definitions:ro"]


def test_services_wait_for_healthy_dependencies() -> None:
    services = _compose()["services"]
    for name in ("rabbitmq", "mongodb", "coordinator"):
        assert "healthcheck" in services[name], name
    for name in ("coordinator", "inventory", "payments"):
        depends = services[name]["depends_on"]
        assert depends["rabbitmq"]["condition"] == "service_healthy"
        assert depends["mongodb"]["condition"] == "service_healthy"


def test_the_coordinator_is_open_only_on_this_machines_loopback() -> None:
    coordinator = _compose()["services"]["coordinator"]
    environment = coordinator["environment"]
    assert environment["SAGA_HTTP_HOST"] == "0.0.0.0"
    if "true" in str(environment.get("SAGA_API_ALLOW_ANONYMOUS", "")):
        assert all(str(port).startswith("127.0.0.1:") for port in coordinator["ports"])
