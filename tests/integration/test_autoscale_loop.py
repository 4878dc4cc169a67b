"""The operator's autoscaler against real gateways: their /load, summed, and what it does with it.

The gateways and workers are real processes; the Kubernetes side is a small typed fake that
holds one worker Deployment and the gateway Service's EndpointSlices (the whole operator on a
real API server is the cluster tier's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from tests.support.procs import Proc, make_proc, running, vgate_process
from tests.support.waiting import eventually
from vgate.procs import free_port
from vgate_operator.autoscale import loop
from vgate_operator.autoscale.loop import Autoscaler

NAME, NS, MODEL = "demo", "llm", "qwen"
WORKER = f"{NAME}-worker-{MODEL}"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


def resource(**autoscaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "vgate.io/v1alpha1",
        "kind": "VGateDeployment",
        "metadata": {"name": NAME, "namespace": NS, "uid": "u1"},
        "spec": {
            "models": [{"name": MODEL, "maxNumSeqs": 4, "autoscaling": {"maxReplicas": 8, **autoscaling}}],
            "worker": {"dryRun": True},
        },
    }


def endpoint_slice(port: int) -> dict[str, Any]:
    """One gateway pod as the EndpointSlice controller lists it (each on its own loopback port)."""
    return {
        "ports": [{"name": "http", "port": 8000}, {"name": "internal", "port": port}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True, "serving": True}}],
    }


@dataclass
class FakeKube:
    """The worker Deployment and the gateway slices; records every scale and Event."""

    replicas: int
    ready: int
    slices: list[dict[str, Any]]
    scaled: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if (kind, namespace, name) != ("Deployment", NS, WORKER):
            return None
        return {"spec": {"replicas": self.replicas}, "status": {"readyReplicas": self.ready}}

    async def select(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        assert (kind, namespace, selector) == (
            "EndpointSlice",
            NS,
            f"kubernetes.io/service-name={NAME}-gateway",
        )
        return self.slices

    async def scale(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        assert (namespace, name) == (NS, WORKER)
        self.replicas = replicas
        self.scaled.append((time.monotonic(), replicas))
        return {}

    async def post_event(
        self, involved: dict[str, Any], reason: str, message: str, kind: str = "Normal"
    ) -> None:
        assert involved["metadata"]["uid"] == "u1"
        self.events.append((reason, message))


@dataclass
class Gateways:
    procs: list[Proc]
    endpoints: Path
    stack: ExitStack
    tmp_path: Path

    def slices(self) -> list[dict[str, Any]]:
        return [endpoint_slice(p.internal_port or 0) for p in self.procs]

    def queued(self) -> int:
        return sum(httpx.get(f"{p.internal_url}/load").json()["models"][MODEL]["queued"] for p in self.procs)

    def add_worker(self) -> None:
        proc = make_proc(["worker", "--dry-run", "--served-model-name", MODEL], self.tmp_path, name="worker")
        (worker,) = self.stack.enter_context(running([proc]))
        self.endpoints.write_text(self.endpoints.read_text() + worker.url + "\n")


@pytest.fixture
def gateways(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Gateways]:
    """``param`` gateways (default 1) that know the model and have no worker yet."""
    count = getattr(request, "param", 1)
    endpoints = tmp_path / "endpoints"
    endpoints.write_text("")
    env = {"VGATE_MODELS": MODEL, "VGATE_ENDPOINTS_FILE": str(endpoints), "VGATE_HEALTH_INTERVAL_S": "0.2"}
    with ExitStack() as stack:
        procs = [
            stack.enter_context(
                vgate_process(["gateway"], tmp_path, env=env, ready_path="/ready", name=f"gw{i}")
            )
            for i in range(count)
        ]
        yield Gateways(procs, endpoints, stack, tmp_path)


async def chat(client: httpx.AsyncClient, gateway: Proc) -> httpx.Response:
    return await client.post(f"{gateway.url}/v1/chat/completions", json=CHAT)


class Stopped:
    """kopf's daemon flag, as far as the loop uses it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self, seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)


async def test_the_first_queued_request_wakes_a_model_at_zero_within_a_couple_of_seconds(
    gateways: Gateways,
) -> None:
    kube = FakeKube(replicas=0, ready=0, slices=gateways.slices())
    stopped = Stopped()
    body = resource(minReplicas=0)
    scaler = asyncio.create_task(loop.run(body, kube, stopped, interval_s=2.0, timeout_s=1.0))
    try:
        await asyncio.sleep(3)  # a few idle rounds: nothing to do at zero
        assert kube.scaled == []
        async with httpx.AsyncClient(timeout=60) as client:
            request = asyncio.create_task(chat(client, gateways.procs[0]))
            await eventually(lambda: gateways.queued() == 1, within=10)
            queued_at = time.monotonic()
            await eventually(lambda: bool(kube.scaled), within=5)
            (at, replicas), *_ = kube.scaled
            assert replicas == 1
            assert at - queued_at <= 2.5  # one 2 s round, and the time to read the gateways
            reason, message = kube.events[0]
            assert reason == "ScaledUp"
            assert message.startswith(f"{MODEL}: 0 → 1, 1 in flight + queued")
            # The Deployment controller's part: the worker starts; the held request is answered.
            gateways.add_worker()
            answer = await request
        assert answer.status_code == 200, answer.text
    finally:
        stopped.event.set()
        await scaler


@pytest.mark.parametrize("gateways", [2], indirect=True)
async def test_the_load_of_every_gateway_replica_is_summed(gateways: Gateways, caplog: Any) -> None:
    a, b = gateways.procs
    # target 4 a replica; 2 queued at one gateway and 3 at the other: only their sum asks for 2.
    body = resource(targetPerReplica=4)
    kube = FakeKube(replicas=1, ready=1, slices=gateways.slices())
    async with httpx.AsyncClient(timeout=60) as client, aiohttp.ClientSession() as http:
        requests = [asyncio.create_task(chat(client, g)) for g in (a, a, b, b, b)]
        await eventually(lambda: gateways.queued() == 5, within=10)
        scaler = Autoscaler(kube, http)
        await scaler.tick(body)
        assert kube.replicas == 2
        assert kube.events[0][1].startswith(f"{MODEL}: 1 → 2, 5 in flight + queued, target 4 per replica")

        # A gateway that does not answer is left out with a warning, never read as zero load.
        kube.slices = [*gateways.slices(), endpoint_slice(free_port())]
        with caplog.at_level(logging.WARNING, logger="vgate_operator.autoscale.loop"):
            await scaler.tick(body)
        assert "did not answer" in caplog.text
        assert kube.replicas == 2
        for r in requests:
            r.cancel()


async def test_when_no_gateway_answers_nothing_scales_down(gateways: Gateways, caplog: Any) -> None:
    # No load and no delays: with answers, 3 replicas would go to 1 at once (halving per step).
    body = resource(minReplicas=1, scaleDownDelaySeconds=0, stableWindowSeconds=1, panicWindowSeconds=1)
    kube = FakeKube(replicas=3, ready=3, slices=[endpoint_slice(free_port()), endpoint_slice(free_port())])
    async with aiohttp.ClientSession() as http:
        scaler = Autoscaler(kube, http)
        with caplog.at_level(logging.WARNING, logger="vgate_operator.autoscale.loop"):
            for _ in range(3):
                await scaler.tick(body)
                await asyncio.sleep(0.5)
        assert kube.scaled == []
        assert "no gateway answered /load" in caplog.text
        kube.slices = gateways.slices()  # the gateways answer: zero load now counts
        for _ in range(4):
            await scaler.tick(body)
            await asyncio.sleep(1.1)
        assert kube.replicas < 3
