"""The VGateDeployment the chart can create from values, and the ``helm test`` pod that checks it.

The test pod's probe script itself runs against a real worker in
``tests/integration/test_chart_test_pod.py``.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.chart import NAMESPACE, ROOT, by_kind, manifests, render

CRD = ROOT / "crds" / "vgate.io_vgatedeployments.yaml"


def notes(values: dict[str, Any]) -> str:
    return next(text for path, text in manifests(values).items() if path.endswith("NOTES.txt"))


def spec_schema() -> dict[str, Any]:
    if not CRD.is_file():
        pytest.fail(f"{CRD.relative_to(ROOT)} is missing")
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    return version["schema"]["openAPIV3Schema"]


def test_the_default_deployment_spec_is_valid_for_the_crd() -> None:
    (vgd,) = by_kind(render({"deployment": {"enabled": True}}), "VGateDeployment")
    assert vgd["apiVersion"] == "vgate.io/v1alpha1"
    assert vgd["metadata"]["namespace"] == NAMESPACE
    # OpenAPI 3.0 (the CRD dialect) uses draft-4 keywords, e.g. boolean exclusiveMinimum.
    jsonschema.Draft4Validator(spec_schema()).validate(vgd)
    assert vgd["spec"]["worker"]["dryRun"] is True  # installs anywhere: no GPU, no download


def test_deployment_goes_to_the_watched_namespace() -> None:
    (vgd,) = by_kind(
        render({"deployment": {"enabled": True}, "watchNamespaces": ["team-a"]}), "VGateDeployment"
    )
    assert vgd["metadata"]["namespace"] == "team-a"
    (pod,) = by_kind(render({"deployment": {"enabled": True}, "watchNamespaces": ["team-a"]}), "Pod")
    assert pod["metadata"]["namespace"] == "team-a"


def test_no_deployment_and_no_test_pod_unless_enabled() -> None:
    docs = render({})
    assert not by_kind(docs, "VGateDeployment")
    assert not by_kind(docs, "Pod")


def test_notes_say_how_to_apply_a_deployment_and_reach_its_gateway() -> None:
    text = notes({"deployment": {"enabled": True, "name": "chat"}})
    assert "kubectl apply -n vgate-system -f examples/dry-run.yaml" in text
    assert "port-forward svc/chat-gateway 8000:8000" in text
    assert "helm test rel -n vgate-system" in text


def test_helm_test_pod_targets_the_gateway_service_of_the_deployment() -> None:
    (pod,) = by_kind(render({"deployment": {"enabled": True, "name": "chat"}}), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    args = pod["spec"]["containers"][0]["args"]
    assert args[1] == "http://chat-gateway.vgate-system.svc:8000/v1/models"
    assert yaml.safe_load(args[2]) == ["qwen"]


@pytest.mark.parametrize(
    "values",
    [
        {"clusterWide": True},
        {"watchNamespaces": ["team-a"]},
        {"operator": {"replicas": 1, "peering": {"enabled": False}}},
    ],
    ids=["all-namespaces", "one-namespace", "standalone"],
)
def test_the_operator_accepts_the_command_line_the_chart_gives_it(values: dict[str, Any]) -> None:
    from vgate_operator.cli import _parser

    (deployment,) = by_kind(render(values), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "operator"  # the image's entrypoint is `vgate`
    args = _parser().parse_args(container["args"][1:])
    expected = [] if values.get("clusterWide") else values.get("watchNamespaces", [NAMESPACE])
    assert args.namespace == expected
    assert bool(args.standalone) == (not args.peering)
    port = container["ports"][0]["containerPort"]
    assert args.liveness == f"http://0.0.0.0:{port}/healthz"
    metrics = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    assert args.metrics == ("0.0.0.0", metrics)
