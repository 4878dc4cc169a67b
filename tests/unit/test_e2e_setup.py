"""The kind end-to-end path as configured: the cluster config and the CI workflow.

The order of the steps ``make e2e-kind`` runs is checked with ``make -n`` in
``tests/integration/test_make_targets.py``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_kind_cluster_exposes_ingress_ports_on_the_ingress_ready_node() -> None:
    config = yaml.safe_load((ROOT / "hack" / "kind-config.yaml").read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    (node,) = [n for n in config["nodes"] if n["role"] == "control-plane"]
    assert "ingress-ready=true" in node["kubeadmConfigPatches"][0]
    ports = {(m["containerPort"], m["hostPort"]) for m in node["extraPortMappings"]}
    assert ports == {(80, 80), (443, 443)}


def test_ci_workflow_runs_make_e2e_kind_with_kind_and_helm_from_their_actions() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "e2e-kind.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the bare key `on` as a boolean
    assert "push" in triggers
    steps = workflow["jobs"]["e2e-kind"]["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    assert "helm/kind-action" in uses
    assert "azure/setup-helm" in uses
    runs = [s.get("run", "") for s in steps]
    assert any(r.startswith("make e2e-kind") for r in runs)
    cleanup = next(s for s in steps if "kind-down" in s.get("run", ""))
    assert cleanup["if"] == "always()"
