"""The README documents every gateway setting a user can set, with the default it has."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.docs_tables import documented_default, table_default
from vgate_gateway.efficiency.dedup import MAX_FLIGHTS
from vgate_gateway.settings import GatewaySettings

README = (Path(__file__).parents[2] / "README.md").read_text()


@pytest.mark.parametrize("field", sorted(GatewaySettings.model_fields))
def test_every_gateway_setting_is_in_the_readme(field: str) -> None:
    assert f"`VGATE_{field.upper()}`" in README


SCALAR_DEFAULTS = sorted(
    name for name, info in GatewaySettings.model_fields.items() if isinstance(info.default, str | int | float)
)


@pytest.mark.parametrize("field", SCALAR_DEFAULTS)
def test_the_readme_names_each_gateway_settings_default(field: str) -> None:
    """A default the table writes as a value (not in words, such as "one minute's worth") is the code's."""
    documented = table_default(README, f"VGATE_{field.upper()}", 0)
    assert documented in (None, documented_default(GatewaySettings.model_fields[field].default))


def test_the_efficiency_doc_states_the_dedup_flight_cap() -> None:
    """The cap has no setting, so docs/efficiency.md is where a user learns it."""
    doc = (Path(__file__).parents[2] / "docs" / "efficiency.md").read_text()
    assert f"At most {MAX_FLIGHTS} calls are shared" in " ".join(doc.split())


def test_the_gateway_doc_names_the_owner_of_every_module_on_the_request_path() -> None:
    """A newcomer finds each step's module from docs/gateway.md alone."""
    package = Path(__file__).parents[2] / "gateway" / "vgate_gateway"
    doc = (Path(__file__).parents[2] / "docs" / "gateway.md").read_text()
    on_path = [
        p.relative_to(package).as_posix()
        for room in ("front", "efficiency", "upstream")
        for p in sorted((package / room).glob("*.py"))
        if p.name != "__init__.py"
    ]
    on_path += ["protocol.py", "errors.py", "sse.py"]
    missing = [m for m in on_path if f"`{m}`" not in doc and f"`{m.split('/')[-1]}`" not in doc]
    assert not missing, f"docs/gateway.md does not say who owns {missing}"
