"""Values the gateway, worker, operator, chart and images each keep for themselves agree.

The three packages never import one another (an import contract), so a value two of them
rely on has one home in each; the chart and the Dockerfiles spell theirs out. These tests
keep the copies from drifting apart, down to the probe paths the operator gives its pods.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import uvicorn
from starlette.testclient import TestClient

from tests.support.chart import by_kind, render
from tests.support.fake_upstreams import Answer, Call, FakeUpstreams
from tests.support.waiting import wait_until
from vgate_gateway.app import build_app as build_gateway
from vgate_gateway.discovery.static import StaticDiscovery
from vgate_gateway.settings import GatewaySettings, load_settings
from vgate_gateway.upstream.routing import STRATEGIES
from vgate_operator import spec as operator_spec
from vgate_operator.builders import Owner, build_all
from vgate_operator.builders.common import HTTP_PORT
from vgate_operator.builders.gateway import INTERNAL_PORT
from vgate_operator.spec import NO_QUANTIZATION_FLAG, parse_spec
from vgate_operator.status import healthy_status
from vgate_worker import settings as worker_settings
from vgate_worker.launcher import build_vllm_argv
from vgate_worker.settings import QUANTIZATIONS, WorkerSettings
from vgate_worker.sim.app import build_app as build_simulator
from vgate_worker.sim.settings import SimSettings

ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner(name="demo", namespace="llm", uid="00000000-0000-4000-8000-000000000001")
#: A spec that leaves every knob at its default.
MINIMAL = {"models": [{"name": "m"}]}


def _objects(raw: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in build_all(OWNER, parse_spec(OWNER.name, raw))}


def _worker_settings(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> WorkerSettings:
    """The settings a (non-dry-run) worker pod of ``raw`` starts with, read from its env."""
    container = _objects(raw)[("Deployment", "demo-worker-m")]["spec"]["template"]["spec"]["containers"][0]
    for entry in container["env"]:
        if "value" in entry:
            monkeypatch.setenv(entry["name"], entry["value"])
    return WorkerSettings()


def _gateway_settings(raw: dict[str, Any], tmp_path: Path) -> GatewaySettings:
    """The settings a gateway pod of ``raw`` starts with, read from its ConfigMap."""
    config = _objects(raw)[("ConfigMap", "demo-gateway")]
    path = tmp_path / "gateway.yaml"
    path.write_text(config["data"]["gateway.yaml"])
    return load_settings(config=path)


def _exposed(dockerfile: str) -> set[int]:
    text = (ROOT / dockerfile).read_text()
    return {int(port) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for port in line.split()}


@pytest.fixture(autouse=True)
def _defaults_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read here are the code's defaults, whatever this shell exports."""
    for name in list(os.environ):
        if name.startswith("VGATE_"):
            monkeypatch.delenv(name)


def test_the_operator_and_the_worker_default_to_the_same_model(monkeypatch: pytest.MonkeyPatch) -> None:
    assert operator_spec.DEFAULT_MODEL == worker_settings.DEFAULT_MODEL
    assert _worker_settings(MINIMAL, monkeypatch).model == WorkerSettings().model


def test_the_operator_offers_the_workers_quantizations_and_auto() -> None:
    """The spec's ``auto`` is the worker's ``none``; the spec's ``none`` only declares the weights."""
    assert set(get_args(operator_spec.Quantization)) == {*QUANTIZATIONS, "auto"}
    assert {"auto", WorkerSettings().quantization} == NO_QUANTIZATION_FLAG


#: A model id each spec quantization accepts, and the quantization.
QUANTIZED = [
    ("org/Model-AWQ", "auto"),
    ("org/Model-AWQ", "awq"),
    ("org/Model-AWQ", "awq_marlin"),
    ("org/Model-GPTQ", "gptq"),
    ("org/Model", "fp8"),
    ("org/Model", "none"),
]


@pytest.mark.parametrize(("model", "quantization"), QUANTIZED)
def test_each_spec_quantization_reaches_vllm_as_the_flag_it_names(
    model: str, quantization: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = {"models": [{"name": "m", "model": model, "quantization": quantization}]}
    argv = build_vllm_argv(_worker_settings(raw, monkeypatch))
    if quantization in NO_QUANTIZATION_FLAG:
        assert "--quantization" not in argv
    else:
        assert argv[argv.index("--quantization") + 1] == quantization


def test_the_cases_above_cover_every_spec_quantization() -> None:
    assert {q for _, q in QUANTIZED} == set(get_args(operator_spec.Quantization))


def test_the_operator_offers_exactly_the_gateways_routing_strategies() -> None:
    assert set(get_args(operator_spec.Routing)) == set(STRATEGIES)
    assert GatewaySettings().routing in STRATEGIES


def test_a_spec_that_says_nothing_configures_the_gateway_as_its_own_defaults_do(tmp_path: Path) -> None:
    configured, defaults = _gateway_settings(MINIMAL, tmp_path), GatewaySettings()
    fields = ("routing", "batch_size", "batch_wait_ms", "cache_maxsize", "cache_ttl_s", "dedup")
    assert {f: getattr(configured, f) for f in fields} == {f: getattr(defaults, f) for f in fields}


def test_operator_pods_serve_on_the_ports_the_components_and_images_default_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = _gateway_settings(MINIMAL, tmp_path)
    defaults = GatewaySettings()
    assert (gateway.port, gateway.internal_port) == (defaults.port, defaults.internal_port)
    assert (defaults.port, defaults.internal_port) == (HTTP_PORT, INTERNAL_PORT)
    assert _exposed("Dockerfile.gateway") == {defaults.port, defaults.internal_port}
    assert _worker_settings(MINIMAL, monkeypatch).port == WorkerSettings().port == HTTP_PORT
    assert _exposed("Dockerfile.worker") == {WorkerSettings().port}


def test_the_charts_test_pod_finds_the_gateway_where_the_operator_reports_it() -> None:
    docs = render({"deployment": {"enabled": True, "name": "chat"}})
    (resource,) = by_kind(docs, "VGateDeployment")
    (pod,) = by_kind(docs, "Pod")
    meta = resource["metadata"]
    owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=OWNER.uid)
    status = healthy_status(owner, parse_spec(owner.name, resource["spec"]), 1, {})
    assert pod["spec"]["containers"][0]["args"][1] == status["gatewayURL"] + "/v1/models"


def test_the_charts_network_policy_opens_the_workers_port() -> None:
    policies = by_kind(render({"networkPolicy": {"enabled": True}}), "NetworkPolicy")
    (policy,) = [
        p
        for p in policies
        if p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    ]
    service = _objects(MINIMAL)[("Service", "demo-worker-m")]
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": HTTP_PORT}]
    assert [p["port"] for p in service["spec"]["ports"]] == [HTTP_PORT]


def test_the_gateway_closes_idle_upstream_connections_before_a_simulated_worker_does() -> None:
    """The simulator serves with uvicorn's keep-alive; the gateway must never reuse a connection
    the worker is about to close."""
    assert GatewaySettings().upstream_keepalive_s < uvicorn.Config(app=None).timeout_keep_alive


def _probe_paths(deployment: dict[str, Any]) -> set[str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    probes = ("startupProbe", "readinessProbe", "livenessProbe")
    return {container[p]["httpGet"]["path"] for p in probes if p in container}


def test_the_gateway_answers_the_probes_the_operator_gives_its_pods() -> None:
    def worker(call: Call) -> Answer:
        models = {"object": "list", "data": [{"id": "m"}]}
        return Answer.json(models) if call.path == "/v1/models" else Answer()

    fake = FakeUpstreams(worker)
    app = build_gateway(GatewaySettings(), StaticDiscovery(["http://w1:1"]), lambda: (fake, fake))
    paths = _probe_paths(_objects(MINIMAL)[("Deployment", "demo-gateway")])
    with TestClient(app) as client:
        wait_until(lambda: bool(client.get("/v1/models").json()["data"]), what="a healthy worker")
        assert {path: client.get(path).status_code for path in paths} == dict.fromkeys(paths, 200)


async def test_the_simulator_answers_the_probes_the_operator_gives_dry_run_pods() -> None:
    dry_run = {**MINIMAL, "worker": {"dryRun": True}}
    paths = _probe_paths(_objects(dry_run)[("Deployment", "demo-worker-m")])
    app = build_simulator(SimSettings())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as client,
    ):
        assert {path: (await client.get(path)).status_code for path in paths} == dict.fromkeys(paths, 200)
