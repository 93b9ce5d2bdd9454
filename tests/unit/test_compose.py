"""compose.yaml and the Dockerfile stay true to the code: compose.yaml parses, and what it
names exists.

Three stacks: the default one (a broker, a database, one coordinator, no definitions), the
``examples`` profile (the example participants, and the definitions of ``schemas/``
registered once), and the ``production`` profile (three clustered RabbitMQ nodes, a
three-member MongoDB replica set written with ``w=majority``, two coordinator replicas
listing every broker, the API behind tokens). No Docker engine is needed: the file is read,
its ``${VAR:-default}`` references resolved to their defaults.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from coordinator.api.auth import parse_api_tokens, refuse_anonymous_bind
from coordinator.cli import _parser as cli_parser
from coordinator.settings import CoordinatorSettings
from participants.settings import ParticipantSettings
from tests.conftest import ROOT

PRODUCTION = "production"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _resolved(value: str) -> str:
    """``${NAME:-default}`` → ``default`` (``${NAME}`` → empty), as Compose without the env."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _services(profile: str | None) -> dict[str, dict[str, Any]]:
    """The services of one profile (``None``: those without a profile, the default stack)."""
    return {
        name: service
        for name, service in _compose()["services"].items()
        if (profile in service.get("profiles", []))
        or (profile is None and "profiles" not in service)
    }


def _is_coordinator(service: dict[str, Any]) -> bool:
    return service.get("build") == "." and service.get("entrypoint") is None


def _is_participant(service: dict[str, Any]) -> bool:
    return service.get("entrypoint") == ["python", "-m"]


def test_every_participant_service_runs_an_existing_example_module() -> None:
    services = _compose()["services"]
    modules = [service["command"][0] for service in services.values() if _is_participant(service)]
    assert sorted(modules) == [
        f"participants.examples.{name}"
        for name in ("flights", "hotels", "inventory", "payments", "risk", "shipping")
    ]
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def test_every_saga_variable_names_a_real_setting() -> None:
    services = _compose()["services"]
    coordinators = {n: s for n, s in services.items() if _is_coordinator(s)}
    participants = {n: s for n, s in services.items() if _is_participant(s)}
    assert set(coordinators) == {"coordinator", "coordinator-1", "coordinator-2"}
    # The one-off `saga-coordinator register` of the examples reads the coordinator's settings.
    commands = {**coordinators, "register-examples": services["register-examples"]}
    for fields, group in (
        (CoordinatorSettings.model_fields, commands),
        (ParticipantSettings.model_fields, participants),
    ):
        for name, service in group.items():
            for variable in service["environment"]:
                assert variable.startswith("SAGA_"), (name, variable)
                assert variable.removeprefix("SAGA_").lower() in fields, (name, variable)
    for name, service in services.items():
        if name not in commands and not _is_participant(service):
            names = [v for v in service.get("environment", {}) if v.startswith("SAGA_")]
            assert not names, (name, names)


def test_coordinators_run_a_real_command_and_register_no_example() -> None:
    for name, service in _compose()["services"].items():
        if _is_coordinator(service):
            assert cli_parser().parse_args(service["command"]).command == "run", name
            assert "./schemas:/definitions:ro" not in service.get("volumes", []), name
    for name, service in _services("production").items():
        if _is_coordinator(service):  # the operator's own definitions, registered at start
            assert service["volumes"] == ["./definitions:/definitions:ro"], name
            assert service["environment"]["SAGA_DEFINITIONS_DIR"] == "/definitions", name


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


def test_the_default_coordinator_registers_nothing() -> None:
    coordinator = _compose()["services"]["coordinator"]
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


def test_production_profile_shape() -> None:
    services = _services(PRODUCTION)
    assert sorted(services) == [
        "coordinator-1",
        "coordinator-2",
        "mongodb-1",
        "mongodb-2",
        "mongodb-3",
        "mongodb-init",
        "rabbitmq-1",
        "rabbitmq-2",
        "rabbitmq-3",
    ]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert PRODUCTION in services.get(dependency, {}).get("profiles", []), (
                f"{name} depends on {dependency}, which is not in the production profile"
            )
        if name != "mongodb-init":
            assert "healthcheck" in service, name


def test_production_rabbitmq_nodes_form_one_cluster() -> None:
    services = _services(PRODUCTION)
    nodes = {f"rabbitmq-{n}" for n in (1, 2, 3)}
    config = _compose()["configs"]["rabbitmq-cluster"]["content"]
    settings = dict(
        line.split(" = ", 1) for line in config.splitlines() if line and not line.startswith("#")
    )
    assert settings["cluster_formation.peer_discovery_backend"] == "classic_config"
    listed = {v for k, v in settings.items() if k.startswith("cluster_formation.classic_config")}
    assert listed == {f"rabbit@{services[node]['hostname']}" for node in nodes}
    assert {services[node]["hostname"] for node in nodes} == nodes
    cookies = set()
    for node in nodes:
        env = services[node]["environment"]
        assert services[node]["configs"][0]["source"] == "rabbitmq-cluster"
        assert services[node]["configs"][0]["target"].startswith("/etc/rabbitmq/conf.d/")
        # The nodes and their CLI tools (the health check) share one Erlang cookie.
        assert env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] == env["RABBITMQ_CTL_ERL_ARGS"]
        cookies.add(env["RABBITMQ_CTL_ERL_ARGS"])
        assert not services[node].get("ports"), f"{node} publishes a port"
    assert len(cookies) == 1


def test_production_mongodb_is_a_replica_set_written_with_majority() -> None:
    services = _services(PRODUCTION)
    members = [f"mongodb-{n}" for n in (1, 2, 3)]
    for member in members:
        command = services[member]["command"]
        assert command[command.index("--replSet") + 1] == "rs0", member
        assert not services[member].get("ports"), f"{member} publishes a port"
    initiate = services["mongodb-init"]["command"][-1]
    assert '_id: "rs0"' in initiate
    assert re.findall(r'host: "([\w-]+):27017"', initiate) == members
    for name in ("coordinator-1", "coordinator-2"):
        url = urlsplit(services[name]["environment"]["SAGA_MONGODB_URL"])
        assert url.scheme == "mongodb"
        assert url.netloc.split(",") == [f"{member}:27017" for member in members], name
        query = parse_qs(url.query)
        assert query == {"replicaSet": ["rs0"], "w": ["majority"]}, name
        assert services[name]["depends_on"]["mongodb-init"] == {
            "condition": "service_completed_successfully"
        }


def test_production_coordinators_list_every_broker_and_need_tokens() -> None:
    services = _services(PRODUCTION)
    for name in ("coordinator-1", "coordinator-2"):
        env = services[name]["environment"]
        brokers = [urlsplit(_resolved(url)) for url in env["SAGA_AMQP_URL"].split(",")]
        assert [(b.scheme, b.hostname, b.port) for b in brokers] == [
            ("amqp", f"rabbitmq-{n}", 5672) for n in (1, 2, 3)
        ], name
        for broker in brokers:
            assert broker.username == services["rabbitmq-1"]["environment"]["RABBITMQ_DEFAULT_USER"]
        for n in (1, 2, 3):
            assert services[name]["depends_on"][f"rabbitmq-{n}"] == {"condition": "service_healthy"}
        # Listening beyond loopback, so the API must not be open to anyone.
        assert env["SAGA_HTTP_HOST"] == "0.0.0.0"
        assert env["SAGA_API_TOKENS"].startswith("${SAGA_API_TOKENS"), name
        assert str(env.get("SAGA_API_ALLOW_ANONYMOUS", "false")).lower() == "false", name
        # As the service decides at start-up: refused without tokens, served with them.
        settings = CoordinatorSettings(**_settings(env))
        with pytest.raises(ValueError, match="without API tokens"):
            refuse_anonymous_bind(
                settings.http_host,
                parse_api_tokens(settings.api_tokens),
                allow_anonymous=settings.api_allow_anonymous,
            )
        refuse_anonymous_bind(
            settings.http_host,
            parse_api_tokens("s3cret:write,r3ad:read"),
            allow_anonymous=settings.api_allow_anonymous,
        )


def _settings(env: dict[str, str]) -> dict[str, Any]:
    """The environment as ``CoordinatorSettings`` keyword arguments (defaults resolved)."""
    return {k.removeprefix("SAGA_").lower(): _resolved(str(v)) or None for k, v in env.items()}


def test_the_coordinator_is_open_only_on_this_machines_loopback() -> None:
    coordinator = _compose()["services"]["coordinator"]
    environment = coordinator["environment"]
    assert environment["SAGA_HTTP_HOST"] == "0.0.0.0"
    if "true" in str(environment.get("SAGA_API_ALLOW_ANONYMOUS", "")):
        assert all(str(port).startswith("127.0.0.1:") for port in coordinator["ports"])
