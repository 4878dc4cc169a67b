"""V-Gate on a kind cluster, used as a client would: the official ``openai`` client through
the Ingress, and ``kubectl`` for the VGateDeployment itself."""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.kube import IngressTarget, Kubectl, is_condition, wait_for

pytestmark = pytest.mark.timeout(600)
CHILDREN = "deployments,services,configmaps,serviceaccounts,roles,rolebindings,poddisruptionbudgets,ingresses"


@pytest.fixture(scope="module")
def client(target: IngressTarget) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=target.api_base, api_key="unused", default_headers=target.headers, timeout=60, max_retries=2
    )


def routable_upstreams(kubectl: Kubectl, gateway: str, model: str) -> int | None:
    """How many upstreams the gateway would route ``model`` to right now, per its /stats.

    /stats is on the gateway's internal port, which the Ingress never routes: it is read
    through the API server's Service proxy.
    """
    try:
        raw = kubectl.run(
            "get", "--raw", f"/api/v1/namespaces/{kubectl.namespace}/services/{gateway}:internal/proxy/stats"
        )
        stats = json.loads(raw)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError):
        return None
    return sum(1 for u in stats["upstreams"] if model in u["models"] and u["routable"])


def test_internal_endpoints_are_not_routed_by_the_ingress(target: IngressTarget) -> None:
    for path in ("/stats", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(target.url(path), headers=target.headers, timeout=10).status_code == 404


def test_models_lists_the_served_model(client: openai.OpenAI, model: str) -> None:
    assert model in [m.id for m in client.models.list()]


def test_chat_completion(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0


def test_streaming_chat_arrives_in_chunks(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Count to five."}], max_tokens=24, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2
    assert text
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_identical_deterministic_request_is_answered_from_the_cache(
    client: openai.OpenAI, model: str
) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Cache me {uuid.uuid4()}"}],
        "max_tokens": 16,
        "temperature": 0,
    }
    first = client.chat.completions.with_raw_response.create(**body)
    second = client.chat.completions.with_raw_response.create(**body)
    assert first.headers.get("x-vgate-cache") == "miss"
    assert second.headers.get("x-vgate-cache") == "hit"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content


def test_scaling_a_model_shows_in_routing(
    kubectl: Kubectl, deployed: dict[str, Any], target: IngressTarget, model: str
) -> None:
    name = deployed["metadata"]["name"]
    for replicas in (3, 1):
        models = copy.deepcopy(deployed["spec"]["models"])
        models[0]["replicas"] = replicas
        kubectl.patch("vgatedeployments", name, {"spec": {"models": models}})
        wait_for(
            lambda n=replicas: routable_upstreams(kubectl, f"{name}-gateway", model) == n,
            timeout=240,
            what=f"the gateway to route {model} to {replicas} worker(s)",
            interval=2.0,
        )


def test_deleting_the_resource_removes_its_children(kubectl: Kubectl, example: dict[str, Any]) -> None:
    doomed = copy.deepcopy(example)
    name = f"{example['metadata']['name']}-del"
    doomed["metadata"] = {"name": name}
    doomed["spec"]["ingress"] = {"enabled": False}
    for m in doomed["spec"]["models"]:
        m["replicas"] = 1
    kubectl.apply(doomed)
    selector = f"app.kubernetes.io/instance={name}"
    wait_for(
        lambda: is_condition(kubectl.get("vgatedeployments", name), "Ready"),
        timeout=240,
        what=f"VGateDeployment {name} Ready=True",
        interval=2.0,
    )
    before = kubectl.get(CHILDREN, selector=selector)["items"]
    assert {"Deployment", "Service", "ConfigMap"} <= {i["kind"] for i in before}
    kubectl.delete("vgatedeployments", name)
    wait_for(
        lambda: not kubectl.get(CHILDREN, selector=selector)["items"],
        timeout=180,
        what=f"the children of {name} to be garbage-collected",
        interval=2.0,
    )
