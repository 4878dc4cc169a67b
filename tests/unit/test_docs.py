"""The README documents every gateway setting a user can set, with the default it has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from vgate_gateway.settings import GatewaySettings

README = (Path(__file__).parents[2] / "README.md").read_text()


@pytest.mark.parametrize("field", sorted(GatewaySettings.model_fields))
def test_every_gateway_setting_is_in_the_readme(field: str) -> None:
    assert f"`VGATE_{field.upper()}`" in README


def documented_default(value: Any) -> str:
    """How a table of settings writes a default: ``true``, ``30`` (not ``30.0``), ``0.5``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def table_default(doc: str, variable: str, column: int) -> str | None:
    """The first backticked word in ``column`` of ``variable``'s row, if it has one."""
    row = re.search(rf"^\| `{variable}` \|(.*)$", doc, re.M)
    assert row is not None, variable
    cell = row.group(1).split(" | ")[column]
    found = re.match(r"\s*`([^`]*)`", cell)
    return found.group(1) if found else None


SCALAR_DEFAULTS = sorted(
    name for name, info in GatewaySettings.model_fields.items() if isinstance(info.default, str | int | float)
)


@pytest.mark.parametrize("field", SCALAR_DEFAULTS)
def test_the_readme_names_each_gateway_settings_default(field: str) -> None:
    """A default the table writes as a value (not in words, such as "one minute's worth") is the code's."""
    documented = table_default(README, f"VGATE_{field.upper()}", 0)
    assert documented in (None, documented_default(GatewaySettings.model_fields[field].default))
