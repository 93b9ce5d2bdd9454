"""The public surface of ``participants`` is its ``__all__``."""

from __future__ import annotations

import inspect

import pytest

import participants
from participants import Participant, ParticipantSettings


def test_all_is_complete() -> None:
    public = {
        name
        for name, value in vars(participants).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert set(participants.__all__) == public


def test_all_names_exist() -> None:
    for name in participants.__all__:
        assert getattr(participants, name) is not None


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_AMQP_URL", "amqp://u:p@rabbit:5672/")
    monkeypatch.setenv("SAGA_MONGODB_DATABASE", "shop")
    monkeypatch.setenv("SAGA_EXCHANGE_PREFIX", "acme")
    settings = ParticipantSettings()
    assert settings.amqp_url == "amqp://u:p@rabbit:5672/"
    participant = Participant.from_settings("inventory", settings)
    assert participant.exchanges.commands == "acme.commands"
    assert participant.queue_name == "inventory.commands"


def test_names_and_registrations_are_checked() -> None:
    with pytest.raises(ValueError, match="participant name"):
        Participant("in.ventory", amqp_url="amqp://", mongodb_url="mongodb://x", database="d")
    participant = Participant(
        "inventory", amqp_url="amqp://", mongodb_url="mongodb://x", database="d"
    )

    @participant.action("reserve_stock")
    async def reserve(input: dict[str, object], delivery: participants.Delivery) -> None:
        return None

    with pytest.raises(ValueError, match="registered twice"):
        participant.action("reserve_stock")(reserve)
