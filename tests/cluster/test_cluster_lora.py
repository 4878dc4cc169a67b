"""LoRA adapters on a real control plane: added and removed on a running VGateDeployment.

The chart's operator turns ``spec.models[].adapters`` into the gateway's configuration only:
adding an adapter makes it servable through the gateway with no worker pod restarted, and
removing one makes it a 404 and unloads it from the workers (their own ``/v1/models``).
The scenarios run in order, each from the state the one before left.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import yaml

from tests.cluster.test_cluster import VALUES
from tests.support.cluster import ROOT, Cluster, wait_for
from vgate_operator.builders.common import HTTP_PORT

pytestmark = pytest.mark.timeout(900)

RELEASE, SYSTEM = "vgate", "vgate-system"
NS, NAME, MODEL = "lora", "lora", "qwen"
RESOURCE = {
    "apiVersion": "vgate.io/v1alpha1",
    "kind": "VGateDeployment",
    "metadata": {"name": NAME},
    "spec": {
        "models": [
            {
                "name": MODEL,
                "replicas": 2,
                "maxLoras": 2,
                "adapters": [{"name": "sql", "source": "org/sql-lora"}],
            }
        ],
        "worker": {"dryRun": True},
        "gateway": {"replicas": 1},
    },
}


def ready_pods(cluster: Cluster, component: str) -> list[dict[str, Any]]:
    pods = cluster.items("pods", NS, f"app.kubernetes.io/component={component}")
    return [
        p for p in pods
        if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
    ]  # fmt: skip


def workers(cluster: Cluster) -> dict[str, str]:
    """Ready worker pods: uid -> base URL."""
    return {
        p["metadata"]["uid"]: f"http://{p['status']['podIP']}:{HTTP_PORT}"
        for p in ready_pods(cluster, "worker")
    }


def ask(cluster: Cluster, model: str) -> httpx.Response | None:
    """A completion through the gateway pod, or None while no gateway pod is ready."""
    gateways = ready_pods(cluster, "gateway")
    if len(gateways) != 1:
        return None  # one at a time: a rolling gateway is not yet the one to ask
    body = {"model": model, "prompt": "Say hello", "max_tokens": 12, "temperature": 0}
    try:
        return httpx.post(
            f"http://{gateways[0]['status']['podIP']}:{HTTP_PORT}/v1/completions", json=body, timeout=30
        )
    except httpx.HTTPError:
        return None


def loaded(url: str) -> set[str]:
    return {c["id"] for c in httpx.get(f"{url}/v1/models", timeout=5).json()["data"] if c.get("parent")}


def patch_adapters(cluster: Cluster, adapters: list[dict[str, Any]]) -> None:
    ops = [{"op": "replace", "path": "/spec/models/0/adapters", "value": adapters}]
    cluster.kubectl("patch", "vgatedeployment", NAME, "-n", NS, "--type=json", "-p", json.dumps(ops))


@pytest.fixture(scope="module")
def release(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    values = tmp_path_factory.mktemp("lora") / "values.yaml"
    values.write_text(yaml.safe_dump(VALUES))
    cluster.helm("install", RELEASE, str(ROOT / "charts" / "vgate"), "--namespace", SYSTEM, "--create-namespace",
                 "--values", str(values), "--wait", "--timeout", "180s")  # fmt: skip
    cluster.kubectl("create", "namespace", NS)
    return cluster


@pytest.fixture(scope="module")
def pods(release: Cluster) -> dict[str, str]:
    """The worker pods as they were first ready; every scenario checks they are the same pods."""
    release.apply(RESOURCE, "-n", NS)
    release.kubectl("wait", "--for=condition=Ready", f"vgatedeployment/{NAME}", "-n", NS, "--timeout=180s")
    wait_for(lambda: len(workers(release)) == 2, "two ready worker pods", timeout=120)
    return workers(release)


def test_a_declared_adapter_is_served_through_the_gateway(release: Cluster, pods: dict[str, str]) -> None:
    answer = wait_for(
        lambda: (r := ask(release, "sql")) is not None and r.status_code == 200 and r, "sql served"
    )
    assert "lora sql" in answer.json()["choices"][0]["text"]
    assert sum("sql" in loaded(url) for url in pods.values()) == 1
    # The operator's status counts it, from the gateway's /stats, at a resync.
    wait_for(
        lambda: (
            (((release.get("vgatedeployment", NAME, NS) or {}).get("status") or {}).get("adapters") or [{}])[
                0
            ].get("loadedWorkers")
            == 1
        ),
        "status.adapters[sql].loadedWorkers = 1",
        timeout=60,
    )


def test_an_added_adapter_is_served_with_no_worker_pod_restarted(
    release: Cluster, pods: dict[str, str]
) -> None:
    patch_adapters(
        release, [{"name": "sql", "source": "org/sql-lora"}, {"name": "poet", "source": "org/poet-lora"}]
    )
    answer = wait_for(
        lambda: (r := ask(release, "poet")) is not None and r.status_code == 200 and r,
        "poet served",
        timeout=180,
    )
    assert "lora poet" in answer.json()["choices"][0]["text"]
    assert workers(release) == pods  # the same pods, never restarted
    restarts = [
        s["restartCount"] for p in ready_pods(release, "worker") for s in p["status"]["containerStatuses"]
    ]
    assert restarts == [0, 0]


def test_a_removed_adapter_is_404_and_unloaded(release: Cluster, pods: dict[str, str]) -> None:
    patch_adapters(release, [{"name": "poet", "source": "org/poet-lora"}])
    gone = wait_for(
        lambda: (r := ask(release, "sql")) is not None and r.status_code == 404 and r,
        "sql refused",
        timeout=180,
    )
    assert gone.json()["error"]["code"] == "model_not_found"
    wait_for(lambda: not any("sql" in loaded(url) for url in pods.values()), "sql unloaded from the workers")
    assert workers(release) == pods
    ok = ask(release, "poet")
    assert ok is not None
    assert ok.status_code == 200


def test_deleting_the_resource_and_the_release(release: Cluster) -> None:
    release.kubectl("delete", "vgatedeployment", NAME, "-n", NS, "--wait=true", "--timeout=120s")
    release.helm("uninstall", RELEASE, "--namespace", SYSTEM, "--wait", "--timeout", "300s", timeout=360)
