"""The README documents every gateway setting a user can set."""

from __future__ import annotations

from pathlib import Path

import pytest

from vgate_gateway.settings import GatewaySettings

README = (Path(__file__).parents[2] / "README.md").read_text()


@pytest.mark.parametrize("field", sorted(GatewaySettings.model_fields))
def test_every_gateway_setting_is_in_the_readme(field: str) -> None:
    assert f"`VGATE_{field.upper()}`" in README
