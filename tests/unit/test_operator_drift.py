"""Drift detection: live objects carry server defaults; only real differences cause a write."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from vgate_operator.builders import Owner, build_all
from vgate_operator.drift import covers, in_sync, parse_quantity, repair_ops
from vgate_operator.spec import parse_spec

OWNER = Owner(name="demo", namespace="llm", uid="u1")
SPEC = parse_spec(
    "demo", {"models": [{"name": "a", "resources": {"cpu": "0.5", "memory": "1Gi", "gpus": 1}}]}
)


def desired(kind: str, name: str) -> dict[str, Any]:
    return next(o for o in build_all(OWNER, SPEC) if (o["kind"], o["metadata"]["name"]) == (kind, name))


def as_served(obj: dict[str, Any]) -> dict[str, Any]:
    """What an API server returns: defaults added, quantities canonical, bookkeeping fields."""
    live = copy.deepcopy(obj)
    live["metadata"].update(uid="x", resourceVersion="7", generation=1)
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    if obj["kind"] == "Deployment":
        spec = live["spec"]
        spec.update(revisionHistoryLimit=10, progressDeadlineSeconds=600)
        c = spec["template"]["spec"]["containers"][0]
        c.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
        if c["resources"].get("requests", {}).get("cpu") == "0.5":
            c["resources"]["requests"]["cpu"] = "500m"
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


def test_edited_fields_are_drift_and_the_patch_restores_them() -> None:
    want = desired("Deployment", "demo-worker-a")
    live = as_served(want)
    live["spec"]["replicas"] = 5
    live["spec"]["template"]["spec"]["containers"][0]["env"].pop()
    live["metadata"]["labels"]["team"] = "ml"
    assert not in_sync(want, live)
    repaired = jsonpatch.apply_patch(live, repair_ops(want, live))
    assert in_sync(want, repaired)
    assert repaired["metadata"]["labels"]["team"] == "ml"  # others' labels survive
    assert repaired["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    assert repaired["status"] == {"readyReplicas": 1}


def test_a_changed_spec_hash_is_drift() -> None:
    want = desired("ConfigMap", "demo-gateway")
    live = as_served(want)
    live["metadata"]["annotations"]["vgate.io/spec-hash"] = "old"
    assert not in_sync(want, live)


def test_service_repair_keeps_the_allocated_cluster_ip() -> None:
    want = desired("Service", "demo-worker-a")
    live = as_served(want)
    live["spec"]["ports"][0]["port"] = 9999
    repaired = jsonpatch.apply_patch(live, repair_ops(want, live))
    assert repaired["spec"]["ports"][0]["port"] == 8000
    assert repaired["spec"]["clusterIP"] == "10.0.0.5"


def test_foreign_owner_references_are_kept() -> None:
    want = desired("ConfigMap", "demo-gateway")
    live = as_served(want)
    live["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "other"}]
    repaired = jsonpatch.apply_patch(live, repair_ops(want, live))
    uids = [ref["uid"] for ref in repaired["metadata"]["ownerReferences"]]
    assert uids == ["other", "u1"]
    assert in_sync(want, repaired), "a foreign owner must not cause a write on every pass"


def test_annotations_removed_from_the_resource_are_removed_from_the_child() -> None:
    def ingress(annotations: dict[str, str]) -> dict[str, Any]:
        spec = parse_spec(
            "demo", {"models": [{"name": "a"}], "ingress": {"enabled": True, "annotations": annotations}}
        )
        return next(o for o in build_all(OWNER, spec) if o["kind"] == "Ingress")

    keep, drop = "cert-manager.io/cluster-issuer", "nginx.ingress.kubernetes.io/proxy-body-size"
    live = as_served(ingress({keep: "1", drop: "2"}))
    live["metadata"]["annotations"]["someone.else/x"] = "y"
    want = ingress({keep: "1"})
    assert not in_sync(want, live)
    repaired = jsonpatch.apply_patch(live, repair_ops(want, live))
    assert drop not in repaired["metadata"]["annotations"]
    assert repaired["metadata"]["annotations"][keep] == "1"
    assert repaired["metadata"]["annotations"]["someone.else/x"] == "y"
    assert in_sync(want, repaired)
