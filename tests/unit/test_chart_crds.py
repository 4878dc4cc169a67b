"""The chart's CRDs: the generated VGateDeployment CRD (as in crds/) plus kopf's peering CRDs.

Helm installs ``charts/vgate/crds/`` before any template and never templates it, so the
files there must be plain, valid CRDs, and the VGateDeployment CRD must be byte-identical
to the one in ``crds/`` (``make crds`` writes both: ``tests/integration/test_make_targets.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "crds"
CHART_CRDS = ROOT / "charts" / "vgate" / "crds"
K8S_VERSION = kubernetes_validate.latest_version()


def crd_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def chart_crds() -> dict[str, dict[str, Any]]:
    """name -> CRD for every CRD the chart ships."""
    return {d["metadata"]["name"]: d for p in sorted(CHART_CRDS.glob("*.yaml")) for d in crd_docs(p)}


def test_the_vgatedeployment_crd_has_a_source() -> None:
    assert (SOURCES / "vgate.io_vgatedeployments.yaml").is_file()


@pytest.mark.parametrize("source", sorted(SOURCES.glob("*.yaml")), ids=lambda p: p.name)
def test_chart_copy_matches_the_source_crd(source: Path) -> None:
    copy = CHART_CRDS / source.name
    assert copy.is_file(), f"{copy.relative_to(ROOT)} is missing: run `make crds`"
    assert copy.read_bytes() == source.read_bytes(), (
        f"{copy.relative_to(ROOT)} drifted from crds/: run `make crds`"
    )


def test_every_chart_crd_validates_and_is_plain_yaml() -> None:
    for path in CHART_CRDS.glob("*.yaml"):
        # Helm does not template crds/: a template expression there would be applied verbatim.
        assert "{{" not in path.read_text(), path.name
        for doc in crd_docs(path):
            assert doc["kind"] == "CustomResourceDefinition"
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("name", "kind", "scope"),
    [
        ("clusterkopfpeerings.kopf.dev", "ClusterKopfPeering", "Cluster"),
        ("kopfpeerings.kopf.dev", "KopfPeering", "Namespaced"),
    ],
)
def test_kopf_peering_crds_are_shipped(name: str, kind: str, scope: str) -> None:
    crd = chart_crds()[name]
    assert crd["spec"]["group"] == "kopf.dev"
    assert crd["spec"]["names"]["kind"] == kind
    assert crd["spec"]["scope"] == scope
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    # kopf writes each peer's heartbeat into status; it must be kept as written.
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
