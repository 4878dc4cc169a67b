"""The real operator (``vgate operator`` in a subprocess) against an emulated Kubernetes API."""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import kmock
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import waiting
from tests.support.kmock_cluster import KubeCluster
from vgate import procs
from vgate.procs import vgate_argv

# One emulated cluster and one operator for the module (each test uses its own namespace):
# starting the operator costs seconds, the scenarios themselves are quick.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
CR_PATH = "/apis/vgate.io/v1alpha1/namespaces/{ns}/vgatedeployments"
CHILD_PLURALS = (
    "deployments", "services", "configmaps", "serviceaccounts", "roles", "rolebindings",
    "poddisruptionbudgets", "ingresses",
)  # fmt: skip
RESYNC_S = 0.5


def dry_run_example() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / "dry-run.yaml").read_text())


async def eventually(check: Callable[[], Any], what: str = "condition", within: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy (the operator works asynchronously)."""
    return await waiting.eventually(check, within=within, interval=0.05, what=what)


async def resyncs(operator: Operator, ns: str, count: int) -> None:
    """Wait until the resync timer has completed ``count`` more passes on the resource in ``ns``."""
    line = f"[{ns}/vgate-dry-run] Timer 'resync' succeeded"
    done = operator.log().count(line)
    await eventually(lambda: operator.log().count(line) >= done + count, what=f"resyncs in {ns}")


@asynccontextmanager
async def emulated_cluster() -> AsyncIterator[KubeCluster]:
    async with KubeCluster() as k8s, KubeCluster.Server(k8s):
        k8s.declare("vgate.io/v1alpha1", "vgatedeployments", "VGateDeployment", status=True)
        k8s.declare_builtins()
        yield k8s


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster() -> AsyncIterator[KubeCluster]:
    async with emulated_cluster() as k8s:
        yield k8s


class Operator:
    def __init__(self, cluster: KubeCluster, tmp_path: Path, *args: str, resync_s: float = RESYNC_S) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.write_kubeconfig(tmp_path / "kubeconfig")),
            "VGATE_OPERATOR_RESYNC_INTERVAL_S": str(resync_s),
            "VGATE_OPERATOR_RETRY_DELAY_S": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = tmp_path / "operator.log"
        self.metrics_port = procs.free_port()
        argv = vgate_argv("operator", "--standalone", "--metrics", f"127.0.0.1:{self.metrics_port}", *args)
        self.child = procs.start(argv, env=env, log=self.log_path)

    async def reconciles(self) -> dict[str, float]:
        """``vgate_operator_reconciles_total`` by result, from the operator's own /metrics."""
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{self.metrics_port}/metrics")).text
        return {
            sample.labels["result"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "vgate_operator_reconciles_total"
        }

    async def watching(self, cluster: KubeCluster) -> Operator:
        """Wait until the operator watches VGateDeployments, so no creation races its start-up."""

        def started() -> bool:
            return any(
                r.action == kmock.action.WATCH
                and r.resource is not None
                and r.resource.plural == "vgatedeployments"
                for r in list(cluster._requests)
            )

        await eventually(started, what="the operator to watch VGateDeployments")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after 15 s, waited for in a thread: the emulated API must keep answering."""
        await asyncio.to_thread(self.child.stop, 15.0)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def operator(cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Operator]:
    op = await Operator(cluster, tmp_path_factory.mktemp("operator")).watching(cluster)
    try:
        yield op
    finally:
        await op.stop()
        print(op.log()[-6000:])  # shown by pytest on failure


@pytest_asyncio.fixture(loop_scope="module", autouse=True)
async def delete_resources_afterwards(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Keep one resource alive at a time: every live one is resynced, and they add up."""
    yield
    if "cluster" not in request.fixturenames:
        return
    cluster: KubeCluster = request.getfixturevalue("cluster")
    for (res, ns, name), obj in list(cluster.objects.items()):
        if res.plural == "vgatedeployments" and not obj.deleted:
            async with cluster.delete(CR_PATH.format(ns=ns) + f"/{name}") as r:
                assert r.status in (200, 404)
    await eventually(
        lambda: (
            not any(
                r.plural == "vgatedeployments" and not o.deleted for (r, _, _), o in cluster.objects.items()
            )
        ),
        what="resources to be released by the operator",
    )


async def create(cluster: KubeCluster, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    async with cluster.post(
        CR_PATH.format(ns=ns), json={**body, "metadata": {**body["metadata"], "namespace": ns}}
    ) as r:
        assert r.status in (200, 201), await r.text()
        return await r.json()


async def patch(cluster: KubeCluster, path: str, body: Any) -> None:
    kind = "application/json-patch+json" if isinstance(body, list) else "application/merge-patch+json"
    async with cluster.patch(path, json=body, headers={"Content-Type": kind}) as r:
        assert r.status == 200, await r.text()


def child(cluster: KubeCluster, plural: str, ns: str, name: str) -> dict[str, Any] | None:
    for (res, obj_ns, obj_name), obj in list(cluster.objects.items()):
        if res.plural == plural and obj_ns == ns and obj_name == name and not obj.deleted:
            return obj.raw
    return None


def children(cluster: KubeCluster, ns: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (res.plural, name): obj.raw
        for (res, obj_ns, name), obj in list(cluster.objects.items())
        if obj_ns == ns and res.plural in CHILD_PLURALS and not obj.deleted
    }


def cr_status(cluster: KubeCluster, ns: str, name: str) -> dict[str, Any]:
    return (child(cluster, "vgatedeployments", ns, name) or {}).get("status") or {}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


EXPECTED = {
    ("serviceaccounts", "vgate-dry-run-gateway"),
    ("roles", "vgate-dry-run-gateway"),
    ("rolebindings", "vgate-dry-run-gateway"),
    ("configmaps", "vgate-dry-run-gateway"),
    ("services", "vgate-dry-run-gateway"),
    ("deployments", "vgate-dry-run-gateway"),
    ("poddisruptionbudgets", "vgate-dry-run-gateway"),
    ("ingresses", "vgate-dry-run-gateway"),
    ("services", "vgate-dry-run-worker-qwen-dry-run"),
    ("deployments", "vgate-dry-run-worker-qwen-dry-run"),
    ("poddisruptionbudgets", "vgate-dry-run-worker-qwen-dry-run"),
}


async def test_create_builds_owned_children_and_reports_status(
    cluster: KubeCluster, operator: Operator
) -> None:
    cr = await create(cluster, "team-a", dry_run_example())
    uid = cr["metadata"]["uid"]
    objs = await eventually(
        lambda: (c := children(cluster, "team-a")).keys() >= EXPECTED and c, what="children"
    )
    assert set(objs) == EXPECTED
    for obj in objs.values():
        refs = obj["metadata"]["ownerReferences"]
        assert refs == [
            {"apiVersion": "vgate.io/v1alpha1", "kind": "VGateDeployment", "name": "vgate-dry-run",
             "uid": uid, "controller": True}
        ]  # fmt: skip
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "vgate-dry-run"
    worker = objs[("deployments", "vgate-dry-run-worker-qwen-dry-run")]
    assert worker["spec"]["replicas"] == 2
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["worker", "--dry-run"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    ingress = objs[("ingresses", "vgate-dry-run-gateway")]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["rules"][0]["host"] == "vgate.localtest.me"

    status = await eventually(
        lambda: (s := cr_status(cluster, "team-a", "vgate-dry-run")).get("conditions") and s
    )
    assert {c["type"] for c in status["conditions"]} == {"Ready", "WorkersReady", "GatewayReady", "Degraded"}
    assert condition(status, "Ready")["status"] == "False"
    assert status["observedGeneration"] == 1
    assert status["gatewayURL"] == "http://vgate-dry-run-gateway.team-a.svc:8000"
    assert status["ingressHost"] == "vgate.localtest.me"


async def play_deployment_controller(cluster: KubeCluster, ns: str) -> None:
    """Report every Deployment's rollout as complete, as the Deployment controller would."""
    for name in ("vgate-dry-run-worker-qwen-dry-run", "vgate-dry-run-gateway"):
        obj = child(cluster, "deployments", ns, name)
        n = obj["spec"]["replicas"]
        status = {"replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}
        status["observedGeneration"] = obj["metadata"]["generation"]
        await patch(cluster, f"/apis/apps/v1/namespaces/{ns}/deployments/{name}/status", {"status": status})


async def test_resync_is_quiet_and_updates_roll(cluster: KubeCluster, operator: Operator) -> None:
    await create(cluster, "team-b", dry_run_example())
    await eventually(lambda: children(cluster, "team-b").keys() >= EXPECTED, what="children")
    await eventually(lambda: cr_status(cluster, "team-b", "vgate-dry-run").get("observedGeneration") == 1)
    await resyncs(operator, "team-b", 2)  # the first resync settles
    before_children = len(cluster.writes(*CHILD_PLURALS, namespace="team-b"))
    before_cr = len(cluster.writes("vgatedeployments", namespace="team-b"))
    await resyncs(operator, "team-b", 3)
    assert len(cluster.writes(*CHILD_PLURALS, namespace="team-b")) == before_children, (
        "a resync with nothing changed wrote children"
    )
    assert len(cluster.writes("vgatedeployments", namespace="team-b")) == before_cr, (
        "a resync with nothing changed wrote the status"
    )

    old = children(cluster, "team-b")
    spec = copy.deepcopy(dry_run_example()["spec"])
    spec["gateway"]["batching"] = {"batchSize": 32, "batchWaitMs": 5}
    spec["models"][0]["maxNumSeqs"] = 16
    spec["models"].append({"name": "second", "replicas": 1})
    await patch(cluster, CR_PATH.format(ns="team-b") + "/vgate-dry-run", {"spec": spec})
    await eventually(lambda: cr_status(cluster, "team-b", "vgate-dry-run").get("observedGeneration") == 2)
    new = children(cluster, "team-b")

    config = yaml.safe_load(new[("configmaps", "vgate-dry-run-gateway")]["data"]["gateway.yaml"])
    assert config["batch_size"] == 32
    assert config["services"] == {
        "qwen-dry-run": "vgate-dry-run-worker-qwen-dry-run",
        "second": "vgate-dry-run-worker-second",
    }

    def template_hash(objs: dict[tuple[str, str], Any]) -> str:
        tmpl = objs[("deployments", "vgate-dry-run-gateway")]["spec"]["template"]
        return tmpl["metadata"]["annotations"]["vgate.io/config-hash"]

    assert template_hash(new) != template_hash(old), "a gateway config change must roll the gateway pods"
    worker = new[("deployments", "vgate-dry-run-worker-qwen-dry-run")]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert worker["args"][worker["args"].index("--max-num-seqs") + 1] == "16"
    assert ("deployments", "vgate-dry-run-worker-second") in new

    # Removing a model deletes its worker Deployment and Service.
    spec["models"].pop()
    await patch(cluster, CR_PATH.format(ns="team-b") + "/vgate-dry-run", [
        {"op": "replace", "path": "/spec/models", "value": spec["models"]}
    ])  # fmt: skip
    gone = {("deployments", "vgate-dry-run-worker-second"), ("services", "vgate-dry-run-worker-second")}
    await eventually(
        lambda: not gone & children(cluster, "team-b").keys(),
        what="the removed model's worker Deployment and Service to be deleted",
    )


async def test_drift_is_repaired(cluster: KubeCluster, operator: Operator) -> None:
    await create(cluster, "team-c", dry_run_example())
    await eventually(lambda: children(cluster, "team-c").keys() >= EXPECTED, what="children")
    async with cluster.delete("/api/v1/namespaces/team-c/services/vgate-dry-run-worker-qwen-dry-run") as r:
        assert r.status == 200
    await patch(cluster, "/apis/apps/v1/namespaces/team-c/deployments/vgate-dry-run-gateway",
                [{"op": "replace", "path": "/spec/replicas", "value": 7}])  # fmt: skip
    await eventually(
        lambda: ("services", "vgate-dry-run-worker-qwen-dry-run") in children(cluster, "team-c"),
        what="the deleted Service to be recreated",
    )
    await eventually(
        lambda: child(cluster, "deployments", "team-c", "vgate-dry-run-gateway")["spec"]["replicas"] == 1,
        what="the edited replicas to be restored",
    )


async def test_invalid_spec_sets_condition_and_is_not_retried(
    cluster: KubeCluster, operator: Operator
) -> None:
    body = dry_run_example()
    body["spec"]["models"][0]["quantization"] = "fp8"
    before = await operator.reconciles()
    await create(cluster, "team-d", body)
    status = await eventually(
        lambda: (
            condition(s := cr_status(cluster, "team-d", "vgate-dry-run"), "Ready").get("reason")
            == "InvalidSpec"
            and s
        )
    )
    ready = condition(status, "Ready")
    assert ready["status"] == "False"
    assert "'fp8' contradicts AWQ model" in ready["message"]
    assert children(cluster, "team-d") == {}

    await resyncs(operator, "team-d", 2)  # kopf's own bookkeeping after the failure settles first
    writes = len(cluster.writes("vgatedeployments", namespace="team-d"))
    await resyncs(operator, "team-d", 3)
    assert len(cluster.writes("vgatedeployments", namespace="team-d")) == writes, (
        "an invalid spec must not be retried"
    )
    assert operator.log().count("failed permanently: invalid spec") == 1
    after = await operator.reconciles()
    assert after["invalid_spec"] == before["invalid_spec"] + 1, "the refusal is counted once, as the user's"
    assert after["error"] == before["error"], "an invalid spec is not an operator failure"
    assert children(cluster, "team-d") == {}

    # Fixing the spec reconciles it.
    await patch(cluster, CR_PATH.format(ns="team-d") + "/vgate-dry-run",
                [{"op": "replace", "path": "/spec/models/0/quantization", "value": "awq"}])  # fmt: skip
    await eventually(lambda: children(cluster, "team-d").keys() >= EXPECTED, what="children after the fix")
    status = await eventually(
        lambda: (s := cr_status(cluster, "team-d", "vgate-dry-run")).get("observedGeneration") == 2 and s
    )
    assert condition(status, "Ready")["reason"] != "InvalidSpec"


async def test_the_old_name_of_gateway_processes_works_with_a_deprecated_condition(
    cluster: KubeCluster, operator: Operator
) -> None:
    body = dry_run_example()
    body["spec"]["gateway"]["workers"] = 2
    await create(cluster, "team-w", body)
    status = await eventually(
        lambda: condition(s := cr_status(cluster, "team-w", "vgate-dry-run"), "Deprecated") and s
    )
    deprecated = condition(status, "Deprecated")
    assert (deprecated["status"], deprecated["reason"]) == ("True", "DeprecatedFields")
    assert "set gateway.processes: 2 and remove gateway.workers" in deprecated["message"]
    config = child(cluster, "configmaps", "team-w", "vgate-dry-run-gateway")
    assert yaml.safe_load(config["data"]["gateway.yaml"])["processes"] == 2
    warning = "team-w/vgate-dry-run: gateway.workers is deprecated"
    await resyncs(operator, "team-w", 2)  # a resync that started before the status was written logs too
    logged = operator.log().count(warning)
    assert logged >= 1
    await resyncs(operator, "team-w", 3)
    assert operator.log().count(warning) == logged  # when it appears, not on every resync

    await patch(cluster, CR_PATH.format(ns="team-w") + "/vgate-dry-run",
                [{"op": "remove", "path": "/spec/gateway/workers"},
                 {"op": "add", "path": "/spec/gateway/processes", "value": 2}])  # fmt: skip
    status = await eventually(
        lambda: (s := cr_status(cluster, "team-w", "vgate-dry-run")).get("observedGeneration") == 2 and s
    )
    assert condition(status, "Deprecated") == {}
    config = child(cluster, "configmaps", "team-w", "vgate-dry-run-gateway")
    assert yaml.safe_load(config["data"]["gateway.yaml"])["processes"] == 2


async def test_deleted_resource_leaves_children_to_the_garbage_collector(
    cluster: KubeCluster, operator: Operator
) -> None:
    cr = await create(cluster, "team-e", dry_run_example())
    await eventually(lambda: children(cluster, "team-e").keys() >= EXPECTED, what="children")
    async with cluster.delete(CR_PATH.format(ns="team-e") + "/vgate-dry-run") as r:
        assert r.status == 200
    # The operator releases its finalizer promptly (no deletion handlers to run) ...
    await eventually(
        lambda: child(cluster, "vgatedeployments", "team-e", "vgate-dry-run") is None,
        what="the resource to be deleted",
    )
    # ... and recreates nothing: every child is owned by the deleted resource's uid, so the
    # cluster's garbage collector removes them (KMock has none, so they stay here).
    writes = len(cluster.writes(*CHILD_PLURALS, namespace="team-e"))
    await asyncio.sleep(RESYNC_S * 4)
    assert len(cluster.writes(*CHILD_PLURALS, namespace="team-e")) == writes
    for obj in children(cluster, "team-e").values():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]


async def test_namespace_flag_limits_what_is_served(tmp_path: Path) -> None:
    async with emulated_cluster() as k8s:
        k8s.namespaces |= {"team-f", "team-g"}
        op = await Operator(k8s, tmp_path, "--namespace", "team-f").watching(k8s)
        try:
            await create(k8s, "team-g", dry_run_example())
            await create(k8s, "team-f", dry_run_example())
            await eventually(lambda: children(k8s, "team-f").keys() >= EXPECTED, what="children in team-f")
            await resyncs(op, "team-f", 2)
            assert children(k8s, "team-g") == {}
            assert cr_status(k8s, "team-g", "vgate-dry-run") == {}
        finally:
            await op.stop()


async def test_api_errors_are_reported_and_retried(cluster: KubeCluster, operator: Operator) -> None:
    failures = [503]

    def first_deployment_create(request: kmock.Request) -> bool:
        # Children are server-side applied: a PATCH, which creates the absent Deployment.
        is_create = request.method == kmock.method.PATCH and request.namespace == "team-h"
        if (
            is_create
            and request.resource is not None
            and request.resource.plural == "deployments"
            and failures
        ):
            failures.pop()
            return True
        return False

    cluster[first_deployment_create] << 503
    before = await operator.reconciles()
    await create(cluster, "team-h", dry_run_example())
    status = await eventually(
        lambda: (s := cr_status(cluster, "team-h", "vgate-dry-run")).get("observedGeneration") == 1 and s,
        what="the retry to succeed",
    )
    # KMock runs no Deployment controller: the new Deployments' rollouts have not started.
    assert condition(status, "Ready")["reason"] == "RolloutPending"
    assert "failed temporarily: Kubernetes API error 503" in operator.log()
    reported = [r for r in cluster.writes("vgatedeployments", namespace="team-h") if "ApplyFailed" in r.text]
    assert reported, "the failure was not recorded in the Ready condition"
    # What VGateOperatorReconcileFailing reads: the failed attempt, then the successful retry.
    after = await operator.reconciles()
    assert after["error"] == before["error"] + 1
    assert after["ok"] > before["ok"]


async def test_a_foreign_object_with_a_childs_name_is_refused(
    cluster: KubeCluster, operator: Operator
) -> None:
    foreign = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "vgate-dry-run-gateway", "namespace": "team-j"}, "data": {"mine": "1"}}  # fmt: skip
    async with cluster.post("/api/v1/namespaces/team-j/configmaps", json=foreign) as r:
        assert r.status in (200, 201), await r.text()
    await create(cluster, "team-j", dry_run_example())
    ready = await eventually(
        lambda: (
            (c := condition(cr_status(cluster, "team-j", "vgate-dry-run"), "Ready")).get("reason")
            == "ForeignObject"
            and c
        ),
        what="the refusal in the Ready condition",
    )
    assert ready["status"] == "False"
    assert "ConfigMap vgate-dry-run-gateway already exists and is not controlled by it" in ready["message"]
    mine = child(cluster, "configmaps", "team-j", "vgate-dry-run-gateway")
    assert mine["data"] == {"mine": "1"}
    assert "ownerReferences" not in mine["metadata"], "the foreign object was adopted"
    # The other children are still made, so the rest of the resource is there once the name is free.
    assert ("deployments", "vgate-dry-run-worker-qwen-dry-run") in children(cluster, "team-j")


async def test_ready_pods_are_reported_without_waiting_for_a_resync(tmp_path: Path) -> None:
    async with emulated_cluster() as k8s:
        op = await Operator(k8s, tmp_path, resync_s=600).watching(k8s)
        try:
            await create(k8s, "team-i", dry_run_example())
            await eventually(lambda: cr_status(k8s, "team-i", "vgate-dry-run").get("observedGeneration") == 1)
            assert condition(cr_status(k8s, "team-i", "vgate-dry-run"), "Ready")["status"] == "False"
            await play_deployment_controller(k8s, "team-i")
            status = await eventually(
                lambda: (
                    condition(s := cr_status(k8s, "team-i", "vgate-dry-run"), "Ready").get("status") == "True"
                    and s
                ),
                what="Ready=True from the Deployment events",
            )
            assert status["readyWorkers"] == "2/2"
            assert status["readyGateways"] == "1/1"
            assert condition(status, "Degraded")["status"] == "False"
            assert "Timer 'resync'" not in op.log()
        finally:
            await op.stop()
