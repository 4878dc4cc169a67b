"""docs/worker.md documents every worker setting, under the variable the operator sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.docs_tables import documented_default, table_default
from vgate_worker.settings import WorkerSettings

DOC = (Path(__file__).parents[2] / "docs" / "worker.md").read_text()


@pytest.mark.parametrize("field", sorted(WorkerSettings.model_fields))
def test_every_worker_setting_is_documented(field: str) -> None:
    assert f"`VGATE_WORKER_{field.upper()}`" in DOC
    assert f"`--{field.replace('_', '-')}" in DOC


@pytest.mark.parametrize(
    "field",
    sorted(f for f, info in WorkerSettings.model_fields.items() if isinstance(info.default, str | int)),
)
def test_the_doc_names_each_worker_settings_default(field: str) -> None:
    """A default the table writes as a value (not in words, such as "empty") is the code's."""
    documented = table_default(DOC, f"VGATE_WORKER_{field.upper()}", 1)
    default = WorkerSettings.model_fields[field].default
    assert documented in (None, documented_default(default))
