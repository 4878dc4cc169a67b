"""Status computation: conditions, replica counts, and writing only what changed."""

from __future__ import annotations

import json
from typing import Any

from vgate_operator.builders import Owner
from vgate_operator.builders.common import HTTP_PORT
from vgate_operator.reconcile import controller_of
from vgate_operator.spec import parse_spec
from vgate_operator.status import (
    VGateDeploymentStatus,
    failed_status,
    healthy_status,
    new_deprecation,
    status_patch,
)

OWNER = Owner(name="demo", namespace="llm", uid="u1")
SPEC = parse_spec(
    "demo",
    {
        "models": [{"name": "a", "replicas": 2}, {"name": "b", "replicas": 1}],
        "gateway": {"replicas": 2},
        "ingress": {"enabled": True, "host": "llm.example.com"},
    },
)


def deployment(want: int, ready: int, generation: int = 1, **status: Any) -> dict[str, Any]:
    """A Deployment as its controller reports it once it has rolled out generation 1."""
    observed = {
        "observedGeneration": 1,
        "replicas": want,
        "updatedReplicas": want,
        "readyReplicas": ready,
        "availableReplicas": ready,
        **status,
    }
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": want},
        "status": {k: v for k, v in observed.items() if v},  # the server omits zeros
    }


def live(a: int, b: int, gateway: int) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        ("Deployment", "demo-worker-a"): deployment(2, a),
        ("Deployment", "demo-worker-b"): deployment(1, b),
        ("Deployment", "demo-gateway"): deployment(2, gateway),
    }


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_nothing_ready_yet() -> None:
    status = healthy_status(OWNER, SPEC, 3, live(0, 0, 0))
    cond = conditions(status)
    assert cond["Ready"]["status"] == "False"
    assert cond["Ready"]["reason"] == "WaitingForAvailable"
    assert "worker a: WaitingForAvailable: 0 of 2 updated replicas available" in cond["Ready"]["message"]
    assert cond["WorkersReady"]["status"] == "False"
    assert cond["WorkersReady"]["message"].startswith("0/3 workers ready; worker a: ")
    assert cond["GatewayReady"]["status"] == "False"
    assert cond["Degraded"]["status"] == "False"
    assert all(c["observedGeneration"] == 3 for c in cond.values())
    assert status["observedGeneration"] == 3
    assert status["readyWorkers"] == "0/3"
    assert status["readyGateways"] == "0/2"
    assert status["gatewayURL"] == f"http://demo-gateway.llm.svc:{HTTP_PORT}"
    assert status["ingressHost"] == "llm.example.com"
    assert status["models"] == [
        {"name": "a", "replicas": 2, "readyReplicas": 0},
        {"name": "b", "replicas": 1, "readyReplicas": 0},
    ]


def test_all_ready() -> None:
    cond = conditions(healthy_status(OWNER, SPEC, 1, live(2, 1, 2)))
    assert {k: c["status"] for k, c in cond.items()} == {
        "Ready": "True",
        "WorkersReady": "True",
        "GatewayReady": "True",
        "Degraded": "False",
    }


def test_a_rollout_in_progress_is_not_ready_while_old_pods_serve() -> None:
    # Right after a model change: the old pods are all ready, the new template has none.
    pods = live(2, 1, 2)
    pods[("Deployment", "demo-worker-a")] = deployment(2, 2, generation=2)
    cond = conditions(healthy_status(OWNER, SPEC, 4, pods))
    assert (cond["Ready"]["status"], cond["Ready"]["reason"]) == ("False", "RolloutPending")
    pods[("Deployment", "demo-worker-a")] = deployment(
        2, 2, observedGeneration=2, generation=2, updatedReplicas=1
    )
    cond = conditions(healthy_status(OWNER, SPEC, 4, pods))
    assert (cond["Ready"]["status"], cond["Ready"]["reason"]) == ("False", "RolloutInProgress")
    assert cond["Ready"]["message"] == "worker a: RolloutInProgress: 1 of 2 replicas updated"
    pods[("Deployment", "demo-worker-a")] = deployment(2, 2, replicas=3)
    cond = conditions(healthy_status(OWNER, SPEC, 4, pods))
    assert cond["Ready"]["reason"] == "OldReplicasTerminating"
    assert cond["GatewayReady"]["status"] == "True"
    assert conditions(healthy_status(OWNER, SPEC, 4, {}))["Ready"]["reason"] == "DeploymentMissing"


def test_a_failed_rollout_says_why() -> None:
    pods = live(2, 1, 2)
    deadline = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "demo-worker-b-5d" has timed out progressing.'}  # fmt: skip
    pods[("Deployment", "demo-worker-b")] = deployment(1, 0, conditions=[deadline])
    failure = {
        "type": "ReplicaFailure",
        "status": "True",
        "reason": "FailedCreate",
        "message": "quota exceeded",
    }
    pods[("Deployment", "demo-gateway")] = deployment(2, 0, conditions=[failure], updatedReplicas=0)
    cond = conditions(healthy_status(OWNER, SPEC, 1, pods))
    assert cond["Ready"]["reason"] == "ReplicaFailure"  # the most urgent first
    assert cond["Ready"]["message"] == (
        'worker b: ProgressDeadlineExceeded: ReplicaSet "demo-worker-b-5d" has timed out progressing.; '
        "gateway: ReplicaFailure: quota exceeded"
    )
    assert cond["WorkersReady"]["reason"] == "ProgressDeadlineExceeded"
    assert (cond["GatewayReady"]["reason"], cond["GatewayReady"]["message"]) == (
        "ReplicaFailure",
        "0/2 gateway replicas ready; quota exceeded",
    )


def test_serving_below_capacity_is_degraded() -> None:
    cond = conditions(healthy_status(OWNER, SPEC, 1, live(1, 1, 2)))
    assert cond["Ready"]["status"] == "False"
    assert cond["Degraded"]["status"] == "True"
    assert cond["Degraded"]["reason"] == "ReducedCapacity"
    # A model with no ready worker is not serving at all: not ready, and not "degraded".
    assert conditions(healthy_status(OWNER, SPEC, 1, live(2, 0, 2)))["Degraded"]["status"] == "False"


def test_unchanged_status_needs_no_write_and_keeps_transition_times() -> None:
    first = status_patch({}, healthy_status(OWNER, SPEC, 1, live(0, 0, 0)), "2026-01-01T00:00:00Z")
    assert first["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    again = status_patch(first, healthy_status(OWNER, SPEC, 1, live(0, 0, 0)), "2026-01-01T00:05:00Z")
    assert again == {}
    later = status_patch(first, healthy_status(OWNER, SPEC, 1, live(2, 1, 2)), "2026-01-01T00:09:00Z")
    cond = {c["type"]: c for c in later["conditions"]}
    assert cond["Ready"]["lastTransitionTime"] == "2026-01-01T00:09:00Z"
    assert cond["Degraded"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # still False
    assert set(later) == {"conditions", "models", "readyWorkers", "readyGateways", "modelReplicas"}


def test_invalid_spec_status_keeps_the_last_observed_generation() -> None:
    previous = status_patch({}, healthy_status(OWNER, SPEC, 1, live(2, 1, 2)), "2026-01-01T00:00:00Z")
    failed = failed_status(previous, "InvalidSpec", "models[0]: bad", 2)
    changes = status_patch(previous, failed, "2026-01-01T00:01:00Z")
    assert "observedGeneration" not in changes
    ready = next(c for c in changes["conditions"] if c["type"] == "Ready")
    assert ready == {
        "type": "Ready",
        "status": "False",
        "reason": "InvalidSpec",
        "message": "models[0]: bad",
        "observedGeneration": 2,
        "lastTransitionTime": "2026-01-01T00:01:00Z",
    }
    # Recording the same failure again writes nothing.
    assert status_patch({**previous, **changes}, failed, "2026-01-01T00:02:00Z") == {}


def test_first_visit_of_an_invalid_resource_sets_every_condition() -> None:
    changes = status_patch({}, failed_status({}, "InvalidSpec", "bad", 1), "2026-01-01T00:00:00Z")
    assert [c["type"] for c in changes["conditions"]] == ["Ready", "WorkersReady", "GatewayReady", "Degraded"]
    assert {c["status"] for c in changes["conditions"][1:]} == {"Unknown"}


def test_the_controlling_resource_of_a_child_is_found_by_its_owner_reference() -> None:
    ours = {"apiVersion": "vgate.io/v1alpha1", "kind": "VGateDeployment", "name": "demo", "uid": "u1"}
    assert controller_of({"metadata": {"ownerReferences": [{**ours, "controller": True}]}}) == ("demo", "u1")
    assert controller_of({"metadata": {"ownerReferences": [ours]}}) is None  # not the controller
    other = {**ours, "apiVersion": "apps/v1", "kind": "ReplicaSet", "controller": True}
    assert controller_of({"metadata": {"ownerReferences": [other]}}) is None
    assert controller_of({"metadata": {}}) is None


def test_an_api_refusal_is_reported_in_the_servers_words_and_backed_off() -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    from vgate_operator.reconcile import _describe, _refused

    exc = ApiException(status=422, reason="Unprocessable Entity")
    exc.body = json.dumps(
        {"kind": "Status", "message": 'Deployment.apps "x" is invalid: spec.replicas: Invalid'}
    )
    assert _describe(exc) == (
        'Kubernetes API error 422 Unprocessable Entity: Deployment.apps "x" is invalid: spec.replicas: Invalid'
    )
    assert _refused(exc)
    # Conflicts, throttling and server failures are retried at the short delay.
    assert not any(_refused(ApiException(status=code)) for code in (409, 429, 500, 503))


def test_an_old_field_name_adds_a_deprecated_condition_reported_once() -> None:
    assert "Deprecated" not in conditions(healthy_status(OWNER, SPEC, 1, live(2, 1, 2)))
    old = parse_spec(
        "demo", {"models": [{"name": "a", "replicas": 2}, {"name": "b"}], "gateway": {"workers": 2}}
    )
    status = healthy_status(OWNER, old, 1, live(2, 1, 2))
    deprecated = conditions(status)["Deprecated"]
    assert (deprecated["status"], deprecated["reason"]) == ("True", "DeprecatedFields")
    assert "gateway.workers is deprecated" in deprecated["message"]
    assert conditions(status)["Ready"]["status"] == "True"  # it still works
    # Logged when it appears, not on every resync after.
    assert new_deprecation({}, status) == deprecated["message"]
    written = {**status, "conditions": status_patch({}, status, "t0")["conditions"]}
    assert new_deprecation(written, healthy_status(OWNER, old, 1, live(2, 1, 2))) is None
    # Gone from the spec, gone from the status.
    fixed = healthy_status(OWNER, SPEC, 2, live(2, 1, 2))
    assert "Deprecated" not in {c["type"] for c in status_patch(written, fixed, "t1")["conditions"]}


def test_every_status_written_fits_the_crds_status_schema() -> None:
    """The CRD's status schema is generated from VGateDeploymentStatus: what is written must fit it."""
    healthy = healthy_status(OWNER, SPEC, 1, live(2, 1, 2))
    failed = failed_status(healthy, "InvalidSpec", "models[0]: bad", 2)
    for status in (healthy, failed):
        written = {**status, "conditions": status_patch({}, status, "2026-01-01T00:00:00Z")["conditions"]}
        VGateDeploymentStatus.model_validate(written)
