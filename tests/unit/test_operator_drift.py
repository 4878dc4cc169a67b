"""Drift detection: live objects carry server defaults; only real differences cause a write."""

from __future__ import annotations

import copy
from typing import Any

from vgate_operator.builders import Owner, build_all
from vgate_operator.drift import covers, in_sync, parse_quantity
from vgate_operator.spec import parse_spec

OWNER = Owner(name="demo", namespace="llm", uid="u1")
SPEC = parse_spec(
    "demo", {"models": [{"name": "a", "resources": {"cpu": "0.5", "memory": "1Gi", "gpus": 1}}]}
)


def desired(kind: str, name: str) -> dict[str, Any]:
    return next(o for o in build_all(OWNER, SPEC) if (o["kind"], o["metadata"]["name"]) == (kind, name))


def omit_empty(value: Any) -> Any:
    """What an API server returns for what it was sent: Go's ``omitempty`` drops empty values."""
    if isinstance(value, dict):
        kept = {k: omit_empty(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in ("", [], None, False, 0) or isinstance(v, dict)}
    if isinstance(value, list):
        return [omit_empty(v) for v in value]
    return value


def as_served(obj: dict[str, Any]) -> dict[str, Any]:
    """What an API server returns: empty values dropped, defaults added, quantities canonical."""
    live = omit_empty(copy.deepcopy(obj))
    live["metadata"].update(uid="x", resourceVersion="7", generation=1)
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    if obj["kind"] == "Deployment":
        spec = live["spec"]
        spec.update(revisionHistoryLimit=10, progressDeadlineSeconds=600)
        c = spec["template"]["spec"]["containers"][0]
        c.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
        if c["resources"].get("requests", {}).get("cpu") == "0.5":
            c["resources"]["requests"]["cpu"] = "500m"
        if "limits" in c["resources"]:
            c["resources"]["limits"]["nvidia.com/gpu"] = "1"
        live["status"] = {"readyReplicas": 1}
    if obj["kind"] == "Service":
        live["spec"].update(clusterIP="10.0.0.5", clusterIPs=["10.0.0.5"], sessionAffinity="None")
    return live


def test_quantities_compare_by_value() -> None:
    assert parse_quantity("500m") == parse_quantity("0.5")
    assert parse_quantity("1Gi") == parse_quantity(1024**3)
    assert parse_quantity("http") is None
    assert covers("500m", "0.5")
    assert not covers("600m", "0.5")
    assert not covers(True, 1)


def test_server_defaults_are_not_drift() -> None:
    for kind, name in [
        ("Deployment", "demo-worker-a"),
        ("Service", "demo-worker-a"),
        ("ConfigMap", "demo-gateway"),
    ]:
        want = desired(kind, name)
        assert in_sync(want, as_served(want)), kind


def test_empty_values_the_server_omits_are_not_drift() -> None:
    assert covers({"name": "x"}, {"name": "x", "value": "", "env": [], "optional": False, "n": 0})
    assert covers({}, {"emptyDir": {}})
    assert not covers({}, {"emptyDir": {"medium": "Memory"}})
    dry_run = parse_spec("demo", {"models": [{"name": "a", "replicas": 0}], "worker": {"dryRun": True}})
    for obj in build_all(OWNER, dry_run):
        assert in_sync(obj, as_served(obj)), obj["kind"]


def test_builders_send_no_empty_values() -> None:
    # An empty value comes back omitted; sending none keeps what is applied equal to what is read.
    def empties(value: Any, path: str = "") -> list[str]:
        if isinstance(value, dict):
            return [p for k, v in value.items() for p in empties(v, f"{path}.{k}")]
        if isinstance(value, list):
            return (
                [path] if not value else [p for i, v in enumerate(value) for p in empties(v, f"{path}[{i}]")]
            )
        return [path] if value == "" else []

    dry_run = parse_spec("demo", {"models": [{"name": "a"}], "worker": {"dryRun": True}})
    for spec in (SPEC, dry_run):
        for obj in build_all(OWNER, spec):
            assert empties(obj) == [], obj["kind"]


def test_edited_fields_are_drift() -> None:
    want = desired("Deployment", "demo-worker-a")
    live = as_served(want)
    live["spec"]["replicas"] = 5
    assert not in_sync(want, live)
    live = as_served(want)
    live["spec"]["template"]["spec"]["containers"][0]["env"].pop()
    assert not in_sync(want, live)


def test_other_managers_fields_are_not_drift() -> None:
    # kubectl rollout restart, labels and annotations of others, a defaulted ingressClassName.
    want = desired("Deployment", "demo-worker-a")
    live = as_served(want)
    live["spec"]["template"]["metadata"]["annotations"] = {"kubectl.kubernetes.io/restartedAt": "now"}
    live["metadata"]["labels"]["team"] = "ml"
    assert in_sync(want, live)
    ingress = next(
        o
        for o in build_all(
            OWNER, parse_spec("demo", {"models": [{"name": "a"}], "ingress": {"enabled": True}})
        )
        if o["kind"] == "Ingress"
    )
    live = as_served(ingress)
    live["spec"]["ingressClassName"] = "nginx"
    assert in_sync(ingress, live)


def test_a_changed_spec_hash_is_drift() -> None:
    want = desired("ConfigMap", "demo-gateway")
    live = as_served(want)
    live["metadata"]["annotations"]["vgate.io/spec-hash"] = "old"
    assert not in_sync(want, live)


def test_foreign_owner_references_are_not_drift() -> None:
    want = desired("ConfigMap", "demo-gateway")
    live = as_served(want)
    live["metadata"]["ownerReferences"].insert(
        0, {"apiVersion": "v1", "kind": "X", "name": "x", "uid": "other"}
    )
    assert in_sync(want, live), "a foreign owner must not cause a write on every pass"
    live["metadata"]["ownerReferences"] = live["metadata"]["ownerReferences"][:1]
    assert not in_sync(want, live), "our owner reference removed"


def test_annotations_removed_from_the_resource_are_drift() -> None:
    def ingress(annotations: dict[str, str]) -> dict[str, Any]:
        spec = parse_spec(
            "demo", {"models": [{"name": "a"}], "ingress": {"enabled": True, "annotations": annotations}}
        )
        return next(o for o in build_all(OWNER, spec) if o["kind"] == "Ingress")

    keep, drop = "cert-manager.io/cluster-issuer", "nginx.ingress.kubernetes.io/proxy-body-size"
    live = as_served(ingress({keep: "1", drop: "2"}))
    want = ingress({keep: "1"})
    # The apply that follows drops the removed one: this field manager set it and no longer does.
    assert not in_sync(want, live)
