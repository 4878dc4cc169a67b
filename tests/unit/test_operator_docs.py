"""docs/operator.md names the VGateDeployment defaults the operator applies."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from vgate_operator.spec import parse_spec

DOC = (Path(__file__).parents[2] / "docs" / "operator.md").read_text()
#: The table of spec fields: from its header to the first blank line.
TABLE = DOC.split("| Field | Default | Meaning |", 1)[1].split("\n\n", 1)[0]
#: Every default, as the operator fills in a spec that names one model and nothing else.
DEFAULTS = parse_spec("demo", {"models": [{"name": "m"}]}).model_dump(by_alias=True)


def documented_defaults() -> list[tuple[str, Any]]:
    """(field path, default) for each default the field table writes as a value.

    A row names one field or several siblings (``models[].maxModelLen``, ``gpuMemoryUtilization``)
    with their defaults in the same order, or one object with ``key: value`` defaults of its own.
    Defaults written in words, or with a placeholder such as ``<version>``, are not values.
    """
    found = []
    for names, defaults in re.findall(r"^\| (`[^|]+`) \| ([^|]*) \|", TABLE, re.M):
        fields = re.findall(r"`([^`]+)`", names)
        parent = fields[0].rsplit(".", 1)[0]
        paths = [f if "." in f else f"{parent}.{f}" for f in fields]
        values = re.findall(r"`([^`]+)`", defaults)
        if any(": " in v for v in values):
            pairs = [v.split(": ", 1) for v in values]
            found += [(f"{paths[0]}.{key}", value) for key, value in pairs]
        elif len(values) == len(paths):
            found += list(zip(paths, values, strict=True))
    return [(path, yaml.safe_load(value)) for path, value in found if "<" not in value]


def spec_default(path: str) -> Any:
    node: Any = DEFAULTS
    for part in path.replace("[]", ".0").split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def test_the_table_documents_defaults_as_values() -> None:
    paths = {path for path, _ in documented_defaults()}
    assert {"models[].model", "models[].maxNumSeqs", "gateway.routing", "gateway.batching.batchSize"} <= paths


@pytest.mark.parametrize(("path", "documented"), documented_defaults())
def test_each_documented_default_is_the_operators(path: str, documented: Any) -> None:
    assert spec_default(path) == documented
