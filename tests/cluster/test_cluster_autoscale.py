"""Autoscaling on a real control plane: the chart's operator scales dry-run workers on the gateways' load.

The operator runs as a pod under the chart's RBAC, reads the two gateway pods' ``/load``
through the real EndpointSlices, sets the worker Deployment's replicas and posts Events; the
real Deployment controller and the kubelet harness start and stop the worker pods. Load is
real: the simulator's ``max_num_seqs`` (2) saturates a worker, the gateways queue the rest.
The scenarios run in order, each from the state the one before left.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.cluster.test_cluster import VALUES
from tests.support.cluster import ROOT, Cluster, wait_for
from vgate_operator.builders.common import HTTP_PORT

pytestmark = pytest.mark.timeout(900)

RELEASE, SYSTEM = "vgate", "vgate-system"
NS, NAME, MODEL = "elastic", "elastic", "qwen"
WORKER = f"{NAME}-worker-{MODEL}"
MAX = 3
SCALE_DOWN_DELAY_S, SCALE_TO_ZERO_DELAY_S = 10, 15
RESOURCE = {
    "apiVersion": "vgate.io/v1alpha1",
    "kind": "VGateDeployment",
    "metadata": {"name": NAME},
    "spec": {
        "models": [
            {
                "name": MODEL,
                "maxNumSeqs": 2,  # a worker runs two requests at once: real saturation
                "autoscaling": {
                    "minReplicas": 0,
                    "maxReplicas": MAX,
                    "targetPerReplica": 2,
                    "stableWindowSeconds": 10,
                    "panicWindowSeconds": 2,
                    "scaleDownDelaySeconds": SCALE_DOWN_DELAY_S,
                    "scaleToZeroDelaySeconds": SCALE_TO_ZERO_DELAY_S,
                },
                "queue": {"timeoutSeconds": 120},
            }
        ],
        "worker": {"dryRun": True},
        "gateway": {"replicas": 2},
    },
}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 400}


class ReplicaWatch:
    """Every ``spec.replicas`` the API server reports for the worker Deployment, with when."""

    def __init__(self, cluster: Cluster) -> None:
        self.seen: list[tuple[float, int]] = []
        self.proc = subprocess.Popen(
            [str(cluster.bin / "kubectl"), "get", "deployment", WORKER, "-n", NS, "--watch",
             "-o", 'go-template={{.spec.replicas}}{{"\\n"}}'],
            env=cluster.env(), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.seen.append((time.monotonic(), int(line)))

    @property
    def now(self) -> int:
        return self.seen[-1][1] if self.seen else -1

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def gateway_urls(cluster: Cluster) -> list[str]:
    pods = cluster.items("pods", NS, "app.kubernetes.io/component=gateway")
    ready = [
        p for p in pods
        if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
    ]  # fmt: skip
    return sorted(f"http://{p['status']['podIP']}:{HTTP_PORT}" for p in ready)


def scale_events(cluster: Cluster) -> list[str]:
    out = cluster.kubectl(
        "get", "events", "-n", NS, "--field-selector", f"involvedObject.name={NAME}", "-o", "json"
    )
    items = json.loads(out)["items"]
    items.sort(key=lambda e: (e.get("firstTimestamp") or "", e["metadata"].get("creationTimestamp") or ""))
    return [f"{e['reason']} {e['message']}" for e in items if e["reason"] in ("ScaledUp", "ScaledDown")]


def targets(events: list[str]) -> list[int]:
    return [int(m.group(1)) for e in events if (m := re.search(rf"{MODEL}: \d+ → (\d+),", e))]


async def load(urls: list[str], clients: int, seconds: float) -> list[int]:
    """``clients`` loops of chats spread over the gateways for ``seconds``; every status seen."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds

    async def one(i: int, client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            answer = await client.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=CHAT)
            statuses.append(answer.status_code)

    async with httpx.AsyncClient(timeout=180) as client:
        await asyncio.gather(*(one(i, client) for i in range(clients)))
    return statuses


@pytest.fixture(scope="module")
def release(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    values = tmp_path_factory.mktemp("autoscale") / "values.yaml"
    values.write_text(yaml.safe_dump(VALUES))
    cluster.helm("install", RELEASE, str(ROOT / "charts" / "vgate"), "--namespace", SYSTEM, "--create-namespace",
                 "--values", str(values), "--wait", "--timeout", "180s")  # fmt: skip
    cluster.kubectl("create", "namespace", NS)
    return cluster


@pytest.fixture(scope="module")
def replicas(release: Cluster) -> Any:
    release.apply(RESOURCE, "-n", NS)
    wait_for(lambda: release.get("deployment", WORKER, NS), "the worker Deployment", timeout=120)
    watch = ReplicaWatch(release)
    yield watch
    watch.close()


def test_an_idle_model_scales_to_zero_after_the_delay(release: Cluster, replicas: ReplicaWatch) -> None:
    # Created with one worker (proof that it starts), then given back once idle long enough.
    wait_for(lambda: len(gateway_urls(release)) == 2, "both gateway pods ready", timeout=180)
    wait_for(lambda: replicas.now == 0, "the scale to zero", timeout=120)
    events = scale_events(release)
    assert any(e.startswith(f"ScaledDown {MODEL}: 1 → 0, ") and "idle" in e for e in events), events
    status = release.get("vgatedeployment", NAME, NS)["status"]
    wait_for(lambda: release.get("vgatedeployment", NAME, NS)["status"].get("modelReplicas") == f"{MODEL}=0/0",
             "the status to show 0/0", timeout=60)  # fmt: skip
    assert status["conditions"][0]["type"] == "Ready"
    assert f"{MODEL}=0/0" in release.kubectl("get", "vgatedeployment", NAME, "-n", NS)  # the Models column


async def test_requests_at_zero_are_held_summed_over_both_gateways_and_answered(
    release: Cluster, replicas: ReplicaWatch
) -> None:
    urls = gateway_urls(release)
    assert replicas.now == 0
    sent = time.monotonic()
    async with httpx.AsyncClient(timeout=180) as client:
        # Two requests held by each gateway: only their sum (4) asks for two workers.
        chats = [client.post(f"{u}/v1/chat/completions", json=CHAT) for u in urls for _ in range(2)]
        answers_task = asyncio.gather(*chats)
        await asyncio.sleep(0)
        scaled = await asyncio.to_thread(wait_for, lambda: replicas.now >= 1, "a scale from zero", 30, 0.1)
        assert scaled
        reacted = next(t for t, r in replicas.seen if r >= 1) - sent
        answers = await answers_task
    assert reacted <= 4.0, f"scale from zero took {reacted:.1f}s after the requests"
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    events = scale_events(release)
    assert any(
        "4 in flight + queued, target 2 per replica" in e for e in events if e.startswith("ScaledUp")
    ), events


async def test_load_scales_up_but_never_past_max_and_down_only_after_the_delay(
    release: Cluster, replicas: ReplicaWatch
) -> None:
    urls = gateway_urls(release)
    statuses = await load(urls, clients=10, seconds=40)  # 10 requests at a time: 5 workers' worth
    stopped = time.monotonic()
    assert set(statuses) == {200}
    assert max(r for _, r in replicas.seen) == MAX
    assert max(targets(scale_events(release))) == MAX
    wait_for(lambda: replicas.now < MAX, "a scale down once the load stopped", timeout=120)
    first_down = next(t for t, r in replicas.seen if t > stopped and r < MAX)
    assert first_down - stopped >= SCALE_DOWN_DELAY_S - 1
    wait_for(lambda: replicas.now == 0, "back to zero", timeout=180)


async def test_an_operator_restart_mid_scale_neither_resets_nor_drops_the_workers(
    release: Cluster, replicas: ReplicaWatch
) -> None:
    urls = gateway_urls(release)
    (old,) = [
        p["metadata"]["name"] for p in release.items("pods", SYSTEM, "app.kubernetes.io/component=operator")
    ]
    running = asyncio.create_task(load(urls, clients=6, seconds=45))
    await asyncio.to_thread(wait_for, lambda: replicas.now >= 2, "the scale up to start", 60, 0.2)
    before = len(scale_events(release))
    restarted = time.monotonic()
    release.kubectl(
        "delete", "pod", "-n", SYSTEM, "-l", "app.kubernetes.io/component=operator", "--wait=false"
    )
    statuses = await running
    assert set(statuses) == {200}
    after = [(t, r) for t, r in replicas.seen if t > restarted]
    # The new operator's resume-apply leaves the count to the autoscaler (no reset to 1), and
    # its fresh policy does not read its empty history as "no load".
    assert all(r >= 2 for _, r in after), after
    assert not [e for e in scale_events(release)[before:] if e.startswith("ScaledDown")]
    new = [
        p["metadata"]["name"] for p in release.items("pods", SYSTEM, "app.kubernetes.io/component=operator")
    ]
    assert new
    assert old not in new


def test_turning_autoscaling_off_and_on_hands_the_count_over_without_a_reset(
    release: Cluster, replicas: ReplicaWatch
) -> None:
    # Off: the operator's apply takes the count back (replicas: 2).
    off = [
        {"op": "remove", "path": "/spec/models/0/autoscaling"},
        {"op": "replace", "path": "/spec/models/0/replicas", "value": 2},
    ]
    release.kubectl("patch", "vgatedeployment", NAME, "-n", NS, "--type=json", "-p", json.dumps(off))
    wait_for(lambda: replicas.now == 2, "the fixed count", timeout=120)
    # On again, with a floor of 2: the operator stops sending replicas, which server-side apply
    # would reset to 1 had the count not been handed over to the autoscaler first.
    mark = time.monotonic()
    applied = release.get("deployment", WORKER, NS)["metadata"]["annotations"]["vgate.io/spec-hash"]
    auto = {**RESOURCE["spec"]["models"][0]["autoscaling"], "minReplicas": 2}  # type: ignore[index]
    on = [{"op": "add", "path": "/spec/models/0/autoscaling", "value": auto}]
    release.kubectl("patch", "vgatedeployment", NAME, "-n", NS, "--type=json", "-p", json.dumps(on))
    wait_for(
        lambda: release.get("deployment", WORKER, NS)["metadata"]["annotations"]["vgate.io/spec-hash"] != applied,
        "the operator's apply of the autoscaled Deployment", timeout=60,
    )  # fmt: skip
    time.sleep(6)  # a few autoscaler rounds and a resync
    assert all(r == 2 for t, r in replicas.seen if t > mark), replicas.seen
    live = json.loads(
        release.kubectl("get", "deployment", WORKER, "-n", NS, "-o", "json", "--show-managed-fields")
    )
    managers = {m["manager"]: m for m in live["metadata"]["managedFields"] if m["operation"] == "Apply"}
    assert "f:replicas" in managers["vgate-autoscaler"]["fieldsV1"]["f:spec"]
    assert "f:replicas" not in (managers["vgate-operator"]["fieldsV1"].get("f:spec") or {})


def test_engine_keda_hands_the_model_to_a_scaled_object_the_api_server_accepts(release: Cluster) -> None:
    # KEDA's own CRD (not its controller): the API server validates the operator's ScaledObject
    # against KEDA's published schema, and the operator lists and prunes ScaledObjects for real.
    crd = subprocess.run([str(ROOT / "hack" / "keda" / "crd.sh")], capture_output=True, text=True, check=True)
    release.kubectl("apply", "--server-side", "-f", crd.stdout.strip())
    release.kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=60s")
    keda = {
        **RESOURCE["spec"]["models"][0]["autoscaling"],  # type: ignore[index]
        "engine": "keda",
        "keda": {"prometheusAddress": "http://prometheus.monitoring.svc:9090"},
    }
    patch = [{"op": "replace", "path": "/spec/models/0/autoscaling", "value": keda}]
    release.kubectl("patch", "vgatedeployment", NAME, "-n", NS, "--type=json", "-p", json.dumps(patch))
    scaled = wait_for(lambda: release.get("scaledobject", WORKER, NS), "the ScaledObject", timeout=60)
    assert scaled["spec"]["scaleTargetRef"]["name"] == WORKER
    assert scaled["spec"]["maxReplicaCount"] == MAX
    # Back to the builtin engine: the ScaledObject is pruned.
    builtin = [{"op": "replace", "path": "/spec/models/0/autoscaling/engine", "value": "builtin"},
               {"op": "remove", "path": "/spec/models/0/autoscaling/keda"}]  # fmt: skip
    release.kubectl("patch", "vgatedeployment", NAME, "-n", NS, "--type=json", "-p", json.dumps(builtin))
    wait_for(lambda: not release.get("scaledobject", WORKER, NS), "the ScaledObject to be pruned", timeout=60)
    release.kubectl("delete", "crd", "scaledobjects.keda.sh")


def test_deleting_the_resource_and_the_release(release: Cluster) -> None:
    release.kubectl("delete", "vgatedeployment", NAME, "-n", NS, "--wait=true", "--timeout=120s")
    release.helm("uninstall", RELEASE, "--namespace", SYSTEM, "--wait", "--timeout", "300s", timeout=360)
