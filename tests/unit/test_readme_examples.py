"""The README's definitions that name a file of ``schemas/`` are that file, comments aside."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import ROOT

_BLOCK = re.compile(r"```yaml\n# (schemas/[\w.-]+\.yaml)\n(.*?)```", re.DOTALL)


def _shown() -> dict[str, str]:
    return dict(_BLOCK.findall((ROOT / "README.md").read_text()))


def test_the_readme_shows_both_examples() -> None:
    assert sorted(_shown()) == ["schemas/order-fulfillment.yaml", "schemas/trip-booking.yaml"]


@pytest.mark.parametrize("path", sorted(_shown()))
def test_a_definition_in_the_readme_is_the_shipped_file(path: str) -> None:
    shown = yaml.safe_load(_shown()[path])
    shipped = yaml.safe_load((ROOT / path).read_text())
    assert shown == shipped
