"""The chart, the operator and discovery on a real Kubernetes control plane.

One release and one resource go through their whole life, so the scenarios run in order:
each starts from the state the one before it left.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.support.cluster import ROOT, Cluster, wait_for
from vgate_operator.builders.common import HTTP_PORT

pytestmark = pytest.mark.timeout(600)

RELEASE, SYSTEM = "vgate", "vgate-system"
NS, NAME = "llm", "vgate-dry-run"
WORKER = f"{NAME}-worker-qwen-dry-run"
GATEWAY = f"{NAME}-gateway"
OPERATOR_USER = f"system:serviceaccount:{SYSTEM}:{RELEASE}"
RESYNC_S = 5
#: Every kind the operator creates, and what the controllers make from them.
CHILD_KINDS = (
    "deployments", "replicasets", "pods", "services", "endpointslices", "configmaps", "serviceaccounts",
    "roles", "rolebindings", "poddisruptionbudgets", "ingresses",
)  # fmt: skip
VALUES = {
    # The example goes to its own namespace, created after the install: watch every namespace.
    "clusterWide": True,
    "operator": {
        "replicas": 1,
        "extraEnv": [
            {"name": "VGATE_OPERATOR_RESYNC_INTERVAL_S", "value": str(RESYNC_S)},
            {"name": "VGATE_OPERATOR_RETRY_DELAY_S", "value": "2"},
        ],
    },
}


def example() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / "dry-run.yaml").read_text())


def vgd(cluster: Cluster, name: str = NAME) -> dict[str, Any] | None:
    return cluster.get("vgatedeployment", name, NS)


def ready(obj: dict[str, Any] | None) -> dict[str, Any]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def operator_log(logs_dir: Path) -> str:
    """The operator pod's output, as the kubelet harness keeps it."""
    texts = []
    for log in logs_dir.glob("*/container.log"):
        text = log.read_text(errors="replace")
        if "kopf" in text:
            texts.append(text)
    return "\n".join(texts)


def wait_resyncs(logs_dir: Path, count: int) -> None:
    line = f"[{NS}/{NAME}] Timer 'resync' succeeded"
    start = operator_log(logs_dir).count(line)
    wait_for(lambda: operator_log(logs_dir).count(line) >= start + count, f"{count} resyncs", timeout=120)


def rollout_complete(dep: dict[str, Any]) -> bool:
    s, want = dep.get("status") or {}, dep["spec"]["replicas"]
    return (
        s.get("observedGeneration") == dep["metadata"]["generation"]
        and s.get("updatedReplicas", 0) == want
        and s.get("availableReplicas", 0) == want
        and s.get("replicas", 0) == want
    )


def gateway_url(cluster: Cluster) -> str:
    pods = cluster.items("pods", NS, "app.kubernetes.io/component=gateway")
    running = [p for p in pods if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")]
    assert running, "no gateway pod"
    return f"http://{running[0]['status']['podIP']}:{HTTP_PORT}/v1"


class ReadyWatch:
    """Every (generation, Ready status, reason, observedGeneration) the API server reports for the resource."""

    TEMPLATE = (
        '{{.metadata.generation}}{{range .status.conditions}}{{if eq .type "Ready"}}'
        ' {{.status}} {{.reason}} {{.observedGeneration}}{{end}}{{end}}{{"\\n"}}'
    )

    def __init__(self, cluster: Cluster) -> None:
        self.seen: list[tuple[str, ...]] = []
        self.proc = subprocess.Popen(
            [str(cluster.bin / "kubectl"), "get", "vgatedeployment", NAME, "-n", NS, "--watch",
             "-o", f"go-template={self.TEMPLATE}"],
            env=cluster.env(), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.seen.append(tuple(line.split()))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Cluster:
    """The cluster the release lives in (installed by the first scenario, removed by the last)."""
    return cluster


def test_helm_installs_the_chart_and_the_operator_runs_under_its_service_account(
    release: Cluster, logs_dir: Path, tmp_path: Path
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(VALUES))
    release.helm(
        "install", RELEASE, str(ROOT / "charts" / "vgate"), "--namespace", SYSTEM, "--create-namespace",
        "--values", str(values), "--wait", "--timeout", "180s",
    )  # fmt: skip
    operator = release.items("deployments", SYSTEM, "app.kubernetes.io/component=operator")
    assert len(operator) == 1
    assert rollout_complete(operator[0])
    # The operator pod's process holds a token of the chart's ServiceAccount, nothing more.
    wait_for(lambda: "kopf" in operator_log(logs_dir), "the operator to start")
    can = release.kubectl(
        "auth", "can-i", "create", "secrets", "-n", NS, f"--as={OPERATOR_USER}", check=False
    )
    assert can.strip() == "no", "the chart grants more than the operator uses"


def test_the_operator_watches_only_its_own_deployments(release: Cluster) -> None:
    # The label filter is the API server's: it never streams other Deployments to the operator.
    reads = wait_for(
        lambda: release.requests(OPERATOR_USER, {"list", "watch"}), "the operator to watch Deployments"
    )
    selectors = {
        urllib.parse.parse_qs(urllib.parse.urlsplit(r["requestURI"]).query).get("labelSelector", [""])[0]
        for r in reads
    }
    assert selectors == {"app.kubernetes.io/managed-by=vgate-operator,app.kubernetes.io/name=vgate"}


def test_kubectl_apply_of_the_dry_run_example_builds_every_child(release: Cluster) -> None:
    release.kubectl("create", "namespace", NS)
    release.apply(example(), "-n", NS)
    selector = f"app.kubernetes.io/instance={NAME}"

    def built() -> bool:
        deps = release.items("deployments", NS, selector)
        pods = release.items("pods", NS, selector)
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return len(deps) == 2 and len(release.items("replicasets", NS, selector)) == 2 and len(running) == 3

    wait_for(built, "Deployments, ReplicaSets and three Running pods", timeout=180)

    def slices_ready() -> bool:
        slices = release.items("endpointslices", NS, f"kubernetes.io/service-name={WORKER}")
        eps = [e for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")]
        return len(eps) == 2

    wait_for(slices_ready, "the EndpointSlice controller to list both workers as ready", timeout=180)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in json.loads(release.kubectl(
        "get", "deployments,services,configmaps,serviceaccounts,roles,rolebindings,poddisruptionbudgets,ingresses",
        "-n", NS, "-l", selector, "-o", "json"))["items"]}  # fmt: skip
    assert ("PodDisruptionBudget", WORKER) in kinds
    assert ("Ingress", GATEWAY) in kinds


def test_ready_only_when_every_rollout_is_complete(release: Cluster) -> None:
    release.kubectl("wait", "--for=condition=Ready", f"vgatedeployment/{NAME}", "-n", NS, "--timeout=180s")
    for dep in release.items("deployments", NS, f"app.kubernetes.io/instance={NAME}"):
        assert rollout_complete(dep), dep["metadata"]["name"]
    status = vgd(release)["status"]
    assert status["readyWorkers"] == "2/2"
    assert status["readyGateways"] == "1/1"


def test_the_openai_client_chats_and_streams_through_the_gateway(release: Cluster) -> None:
    client = openai.OpenAI(base_url=gateway_url(release), api_key="unused", max_retries=0, timeout=30)

    def answers() -> Any:
        try:
            return client.chat.completions.create(
                model="qwen-dry-run", messages=[{"role": "user", "content": "Say hello"}], max_tokens=8
            )
        except openai.APIError:
            return None

    # The gateway's health checks must first find the workers discovery reported.
    reply = wait_for(answers, "the gateway to answer", timeout=60, interval=1.0)
    assert reply.choices[0].message.content
    stream = client.chat.completions.create(
        model="qwen-dry-run",
        messages=[{"role": "user", "content": "Count to five"}],
        max_tokens=8,
        stream=True,
    )
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(chunks)


def test_a_one_replica_model_rolls_under_streaming_load_with_nothing_failed_or_cut(release: Cluster) -> None:
    """maxSurge 0 (right on GPUs): the model has no worker while the new one starts; the gateway holds."""
    one = [{"op": "replace", "path": "/spec/models/0/replicas", "value": 1}]
    release.kubectl("patch", "vgatedeployment", NAME, "-n", NS, "--type=json", "-p", json.dumps(one))
    wait_for(lambda: rollout_complete(release.get("deployment", WORKER, NS)) and
             release.get("deployment", WORKER, NS)["status"].get("replicas") == 1,
             "one worker", timeout=120)  # fmt: skip
    client = openai.OpenAI(base_url=gateway_url(release), api_key="unused", max_retries=0, timeout=120)
    stop = threading.Event()
    outcomes: list[str] = []

    def stream_until_stopped() -> None:
        while not stop.is_set():
            try:
                stream = client.chat.completions.create(
                    model="qwen-dry-run", messages=[{"role": "user", "content": "Tell me more"}],
                    max_tokens=16, stream=True,
                )  # fmt: skip
                finishes = [
                    c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason
                ]
                outcomes.append("ok" if finishes in (["length"], ["stop"]) else f"cut: {finishes}")
            except openai.APIError as exc:
                outcomes.append(f"failed: {exc}")

    clients = [threading.Thread(target=stream_until_stopped, daemon=True) for _ in range(3)]
    for t in clients:
        t.start()
    try:
        wait_for(lambda: len(outcomes) >= 6, "streams flowing before the rollout", timeout=60)
        before = release.get("deployment", WORKER, NS)["metadata"]["generation"]
        change = [{"op": "replace", "path": "/spec/models/0/maxModelLen", "value": 2048}]
        release.kubectl("patch", "vgatedeployment", NAME, "-n", NS, "--type=json", "-p", json.dumps(change))
        wait_for(lambda: (d := release.get("deployment", WORKER, NS))["metadata"]["generation"] > before
                 and rollout_complete(d), "the rollout of the new worker", timeout=180)  # fmt: skip
        during = len(outcomes)
        wait_for(lambda: len(outcomes) >= during + 6, "streams flowing after the rollout", timeout=60)
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=120)
    failed = [o for o in outcomes if o != "ok"]
    assert not failed, f"{len(failed)} of {len(outcomes)} streams failed or were cut: {failed[:5]}"
    old = [
        rs for rs in release.items("replicasets", NS, f"app.kubernetes.io/instance={NAME}")
        if rs["metadata"]["name"].startswith(WORKER) and rs["spec"]["replicas"] == 0
    ]  # fmt: skip
    assert old, "the worker Deployment did not roll to a new ReplicaSet"


def test_a_spec_change_turns_ready_false_until_the_new_replicaset_is_available(release: Cluster) -> None:
    before = vgd(release)["metadata"]["generation"]
    watch = ReadyWatch(release)
    try:
        # A model setting (rolls the workers: new pod template) and its replicas.
        patch = [
            {"op": "replace", "path": "/spec/models/0/maxNumSeqs", "value": 32},
            {"op": "replace", "path": "/spec/models/0/replicas", "value": 3},
        ]
        release.kubectl("patch", "vgatedeployment", NAME, "-n", NS, "--type=json", "-p", json.dumps(patch))
        generation = str(before + 1)
        wait_for(
            lambda: ("True" in (r := ready(vgd(release))).get("status", "")
                     and str(r.get("observedGeneration")) == generation),
            "Ready=True for the new generation", timeout=180,
        )  # fmt: skip
    finally:
        watch.close()
    at_new = [s for s in watch.seen if s[0] == generation and len(s) == 4 and s[3] == generation]
    assert at_new, f"no Ready condition for the new generation: {watch.seen}"
    assert at_new[0][1] == "False", f"Ready was not False first at the new generation: {watch.seen}"
    assert at_new[-1][1] == "True"
    dep = release.get("deployment", WORKER, NS)
    assert rollout_complete(dep)
    assert dep["spec"]["replicas"] == 3
    old = [
        rs for rs in release.items("replicasets", NS, f"app.kubernetes.io/instance={NAME}")
        if rs["metadata"]["name"].startswith(WORKER) and rs["spec"]["replicas"] == 0
    ]  # fmt: skip
    assert old, "the worker Deployment did not roll to a new ReplicaSet"


def test_two_quiet_resyncs_issue_zero_writes(release: Cluster, logs_dir: Path) -> None:
    wait_resyncs(logs_dir, 1)  # let the status of the last rollout settle
    mark = release.audit_mark()
    wait_resyncs(logs_dir, 2)
    writes = [
        f"{w['verb']} {w['objectRef'].get('resource')}/{w['objectRef'].get('name')}"
        for w in release.writes(OPERATOR_USER, since=mark)
        if "kopfpeerings" not in w["objectRef"].get("resource", "")  # the peering heartbeat
    ]
    print(f"writes by the operator across two quiet resyncs: {len(writes)} {writes}")
    assert writes == []
    assert release.writes(OPERATOR_USER), "the audit log shows none of the operator's earlier writes"


def test_kubectl_rollout_restart_survives_the_resync(release: Cluster, logs_dir: Path) -> None:
    release.kubectl("rollout", "restart", f"deployment/{WORKER}", "-n", NS)
    release.kubectl("rollout", "status", f"deployment/{WORKER}", "-n", NS, "--timeout=180s", timeout=200)
    restarted = release.get("deployment", WORKER, NS)
    generation = restarted["metadata"]["generation"]
    wait_resyncs(logs_dir, 2)
    after = release.get("deployment", WORKER, NS)
    annotations = after["spec"]["template"]["metadata"].get("annotations") or {}
    assert "kubectl.kubernetes.io/restartedAt" in annotations
    assert after["metadata"]["generation"] == generation, "the resync rolled the workers again"


def test_a_child_deleted_by_hand_comes_back(release: Cluster) -> None:
    release.kubectl("delete", "service", WORKER, "-n", NS)
    wait_for(lambda: release.get("service", WORKER, NS), "the worker Service to come back", timeout=60)
    release.kubectl("delete", "configmap", GATEWAY, "-n", NS)
    wait_for(lambda: release.get("configmap", GATEWAY, NS), "the gateway ConfigMap to come back", timeout=60)


def test_a_foreign_object_with_a_childs_name_is_refused(release: Cluster) -> None:
    foreign = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "other-gateway", "namespace": NS}, "data": {"team": "someone else"}}  # fmt: skip
    release.apply(foreign)
    other = example()
    other["metadata"]["name"] = "other"
    other["spec"]["ingress"] = {"enabled": False}
    release.apply(other, "-n", NS)
    try:
        condition = wait_for(
            lambda: (r := ready(vgd(release, "other"))).get("reason") == "ForeignObject" and r,
            "the refusal in the Ready condition", timeout=60,
        )  # fmt: skip
        assert condition["status"] == "False"
        assert "ConfigMap other-gateway already exists" in condition["message"]
        mine = release.get("configmap", "other-gateway", NS)
        assert "ownerReferences" not in mine["metadata"]
        assert mine["data"] == {"team": "someone else"}
    finally:
        release.kubectl("delete", "vgatedeployment", "other", "-n", NS, "--wait=true", "--timeout=120s")
        release.kubectl("delete", "configmap", "other-gateway", "-n", NS)


def test_deleting_the_resource_removes_every_child_through_the_garbage_collector(release: Cluster) -> None:
    release.kubectl("delete", "vgatedeployment", NAME, "-n", NS, "--wait=true", "--timeout=120s")

    def left() -> list[str]:
        out = release.kubectl("get", ",".join(CHILD_KINDS), "-n", NS, "-l",
                              f"app.kubernetes.io/instance={NAME}", "-o", "name")  # fmt: skip
        return out.split()

    wait_for(lambda: not left(), "the garbage collector to remove every child", timeout=180)
    # EndpointSlices go with their Services (labelled by the Service, not by the operator).
    slices = release.items("endpointslices", NS)
    assert not [s for s in slices if s["metadata"]["name"].startswith(NAME)]


def test_helm_uninstall_leaves_no_vgatedeployment_terminating(release: Cluster) -> None:
    release.apply(example(), "-n", NS)
    wait_for(lambda: release.items("deployments", NS, f"app.kubernetes.io/instance={NAME}"), "the children")
    release.helm("uninstall", RELEASE, "--namespace", SYSTEM, "--wait", "--timeout", "300s", timeout=360)
    left = json.loads(release.kubectl("get", "vgatedeployments", "-A", "-o", "json"))["items"]
    assert left == [], [f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in left]
    wait_for(
        lambda: not release.items("deployments", NS, f"app.kubernetes.io/instance={NAME}"),
        "the uninstalled resource's children to be garbage-collected", timeout=180,
    )  # fmt: skip
