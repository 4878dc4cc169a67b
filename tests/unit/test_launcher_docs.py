"""docs/worker.md documents every worker setting, under the variable the operator sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from vgate_worker.settings import WorkerSettings

DOC = (Path(__file__).parents[2] / "docs" / "worker.md").read_text()


@pytest.mark.parametrize("field", sorted(WorkerSettings.model_fields))
def test_every_worker_setting_is_documented(field: str) -> None:
    assert f"`VGATE_WORKER_{field.upper()}`" in DOC
    assert f"`--{field.replace('_', '-')}" in DOC
