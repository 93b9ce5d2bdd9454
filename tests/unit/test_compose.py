"""compose.yaml and the Dockerfile stay true to the code: compose.yaml parses, what it names
exists, and the examples come only when asked for."""

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
        for name in ("flights", "hotels", "inventory", "payments", "risk", "shipping")
    ]
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def test_the_examples_run_and_register_only_with_their_profile() -> None:
    services = _compose()["services"]
    examples = {
        name
        for name, service in services.items()
        if service.get("entrypoint") == ["python", "-m"] or name == "register-examples"
    }
    for name, service in services.items():
        assert (service.get("profiles") == ["examples"]) == (name in examples), name
    register = services["register-examples"]
    assert register["volumes"] == ["./schemas:/definitions:ro"]
    assert register["entrypoint"] == ["sh", "-c"]
    assert register["command"] == ["saga-coordinator register /definitions/*.yaml"]
    assert register["depends_on"]["mongodb"]["condition"] == "service_healthy"
    assert sorted((ROOT / "schemas").glob("*.yaml"))  # what the glob registers


def test_the_image_registers_no_definition_by_default() -> None:
    instructions = [
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    assert instructions and not [line for line in instructions if "SAGA_DEFINITIONS_DIR" in line]


def test_coordinator_environment_names_real_settings() -> None:
    coordinator = _compose()["services"]["coordinator"]
    fields = set(CoordinatorSettings.model_fields)
    for name in coordinator["environment"]:
        assert name.startswith("SAGA_"), name
        assert name.removeprefix("SAGA_").lower() in fields, name
    assert coordinator["command"] == ["run"]
    assert "SAGA_DEFINITIONS_DIR" not in coordinator["environment"]  # no examples unless asked
    assert "volumes" not in coordinator


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
