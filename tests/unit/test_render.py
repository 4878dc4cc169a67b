"""``vgate render``'s objects (the exact ones the operator applies), valid for a current Kubernetes.

The command itself (files, stdin, errors) runs as a process in ``tests/integration/test_render_cli.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from vgate_operator.render import render

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["dry-run.yaml", "qwen-awq-gpu.yaml"]
#: Validate against a current release (the schemas ship with kubernetes-validate), and the
#: oldest we support: the gateway's preStop ``sleep`` action needs 1.30.
K8S_VERSION = "1.34"
K8S_VERSIONS = ["1.30", K8S_VERSION]


def rendered(example: str) -> list[dict[str, Any]]:
    """What ``vgate render -f examples/EXAMPLE`` prints, as objects."""
    return render(yaml.safe_load((ROOT / "examples" / example).read_text()))


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("example", EXAMPLES)
def test_rendered_objects_are_valid_kubernetes(example: str, version: str) -> None:
    for obj in rendered(example):
        kubernetes_validate.validate(obj, version, strict=True)


def test_validation_catches_a_malformed_object() -> None:
    """Guard for the test above: the validator does reject what Kubernetes would."""
    deployment = next(o for o in rendered("dry-run.yaml") if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
