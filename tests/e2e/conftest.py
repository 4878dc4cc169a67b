"""End-to-end suite against a kind cluster: refuses anything else, skips when there is none.

``make e2e-kind`` builds the images, creates the cluster, installs ingress-nginx and the
chart, applies ``examples/dry-run.yaml`` and runs this suite with ``VGATE_E2E=1``. Plain
``pytest tests/`` only ever skips here (see ``kube.decide``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.kube import (
    Guard,
    IngressTarget,
    Kubectl,
    current_context,
    decide,
    ingress_target,
    is_condition,
    kubeconfig_paths,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
READY_TIMEOUT = float(os.environ.get("VGATE_E2E_READY_TIMEOUT", "300"))


def _guard() -> Guard:
    return decide(os.environ, current_context(kubeconfig_paths(os.environ)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark this directory's tests ``e2e``; skip them, or stop the run, per the context guard."""
    ours = [item for item in items if HERE in Path(str(item.path)).parents]
    if not ours:
        return
    guard = _guard()
    if guard.error:
        raise pytest.UsageError(f"VGATE_E2E=1 but {guard.reason}")
    if guard.run and shutil.which("kubectl") is None:
        raise pytest.UsageError("VGATE_E2E=1 but kubectl is not on PATH")
    for item in ours:
        item.add_marker(pytest.mark.e2e)
        if not guard.run:
            item.add_marker(pytest.mark.skip(reason=guard.reason))


@pytest.fixture(scope="session")
def guard() -> Guard:
    return _guard()


@pytest.fixture(scope="session")
def kubectl(guard: Guard) -> Kubectl:
    assert guard.context is not None
    return Kubectl(guard.context, os.environ.get("VGATE_E2E_NAMESPACE", "vgate-e2e"))


@pytest.fixture(scope="session")
def example() -> dict[str, Any]:
    """The VGateDeployment the suite runs against (``examples/dry-run.yaml`` by default)."""
    path = ROOT / os.environ.get("VGATE_E2E_EXAMPLE", "examples/dry-run.yaml")
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="session")
def deployed(kubectl: Kubectl, example: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The example applied (idempotent) and Ready; its spec is restored after the session."""
    kubectl.apply(example)
    name = example["metadata"]["name"]
    live = wait_for(
        lambda: (obj := kubectl.get("vgatedeployments", name)) and is_condition(obj, "Ready") and obj,
        timeout=READY_TIMEOUT,
        what=f"VGateDeployment {name} Ready=True",
        interval=2.0,
    )
    yield live
    kubectl.apply(example)


@pytest.fixture(scope="session")
def target(deployed: dict[str, Any]) -> IngressTarget:
    return ingress_target(deployed, os.environ.get("VGATE_E2E_BASE_URL", "http://localhost"))


@pytest.fixture(scope="session")
def model(deployed: dict[str, Any]) -> str:
    return str(deployed["spec"]["models"][0]["name"])
