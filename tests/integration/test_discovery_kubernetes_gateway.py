"""The gateway routes by Kubernetes EndpointSlices, end to end.

A KMock API server holds EndpointSlices that point at real dry-run workers on
loopback; the real gateway process discovers them through a kubeconfig, and the
official ``openai`` client talks to the gateway. Which worker served a request is
read from the worker's own Prometheus metrics, as an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path

import httpx
import kmock
import openai
import pytest

from tests.integration.conftest import MODEL, WORKER_ARGS
from tests.support.kmock_cluster import SLICES_NAMESPACE, SliceAPI, endpoint, endpoint_slice
from tests.support.metrics import ametric
from tests.support.procs import Proc, make_proc, running
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

SERVICE = "qwen-workers"


@dataclass
class Stack:
    api: SliceAPI
    gateway: Proc
    workers: list[Proc]
    client: openai.AsyncOpenAI
    http: httpx.AsyncClient

    def slice_name(self, worker: Proc) -> str:
        return f"{SERVICE}-{worker.port}"

    async def publish_worker(self, worker: Proc, *, ready: bool = True, terminating: bool = False) -> None:
        """Create or update the worker's EndpointSlice (one per worker: each listens on its own port)."""
        obj = endpoint_slice(
            self.slice_name(worker),
            SERVICE,
            endpoint("127.0.0.1", ready=ready, terminating=terminating),
            port=worker.port,
        )
        if self.api.has_slice(self.slice_name(worker)):
            await self.api.patch_slice(self.slice_name(worker), {"endpoints": obj["endpoints"]})
        else:
            await self.api.create(obj)

    async def served(self, worker: Proc) -> int:
        """Requests the worker has finished, from its vLLM-style metrics."""
        return int(await ametric(self.http, worker.url, "vllm:e2e_request_latency_seconds_count"))

    async def complete(self) -> None:
        await self.client.completions.create(model=MODEL, prompt=f"hello {uuid.uuid4()}", max_tokens=2)

    async def route(self, n: int) -> list[int]:
        """Send ``n`` requests one after another; how many each worker served."""
        before = [await self.served(w) for w in self.workers]
        for _ in range(n):
            await self.complete()
        return [await self.served(w) - b for w, b in zip(self.workers, before, strict=True)]

    async def upstreams(self) -> dict[str, dict[str, object]]:
        body = (await self.http.get(f"{self.gateway.internal_url}/stats")).json()
        return {u["url"]: u for u in body["upstreams"]}


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    async with SliceAPI() as api, kmock.Server(api):
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        workers = [make_proc(WORKER_ARGS, tmp_path, name=f"worker{i}") for i in range(2)]
        env = {
            "VGATE_DISCOVERY": "kubernetes",
            "VGATE_SERVICES": json.dumps({MODEL: SERVICE}),
            "VGATE_NAMESPACE": SLICES_NAMESPACE,
            "KUBECONFIG": str(kubeconfig),
            "VGATE_HEALTH_INTERVAL_S": "0.2",
            "VGATE_ROUTING": "round-robin",
            # Every request must reach a worker, so the worker counts say where it went.
            "VGATE_CACHE_MAXSIZE": "0",
            "VGATE_DEDUP": "false",
            # A model with no endpoint holds requests in its queue; here they wait 3 s at most.
            "VGATE_QUEUE_TIMEOUT_S": "3",
        }
        gateway = make_proc(["gateway"], tmp_path, env=env, name="gateway")
        with contextlib.ExitStack() as procs:
            # Started in a thread: the API server they talk to runs on this event loop.
            await asyncio.to_thread(procs.enter_context, running([*workers, gateway]))
            async with (
                httpx.AsyncClient(timeout=10) as http,
                openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as client,
            ):
                try:
                    yield Stack(api, gateway, workers, client, http)
                finally:
                    await asyncio.to_thread(procs.close)


async def routable(stack: Stack, worker: Proc) -> bool:
    """Whether the gateway would send the worker a new request (its /stats)."""
    up = (await stack.upstreams()).get(worker.url)
    return bool(up and up["routable"])


async def absent(stack: Stack, worker: Proc) -> bool:
    return worker.url not in await stack.upstreams()


async def not_(check: Awaitable[bool]) -> bool:
    return not await check


async def test_gateway_follows_endpoint_slices(stack: Stack) -> None:
    w1, w2 = stack.workers
    await stack.api.watching()
    await stack.publish_worker(w1)
    await eventually(lambda: routable(stack, w1), within=15)
    assert await stack.route(4) == [4, 0]

    # Added: served within a second of the slice change.
    added = time.monotonic()
    await stack.publish_worker(w2)
    async with asyncio.timeout(5):
        while (await stack.route(1))[1] == 0:
            pass
    took = time.monotonic() - added
    print(f"new endpoint served {took * 1000:.0f} ms after its EndpointSlice appeared")
    assert took < 1.0
    assert await stack.route(4) == [2, 2]

    # Terminating: a stream in flight on it finishes, new requests go elsewhere.
    stream = await stack.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"tell me a story {uuid.uuid4()}"}],
        max_tokens=150,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},  # vLLM's: always the full 150 tokens
    )
    chunks = [await anext(stream)]
    victim, other = await busy_worker(stack)
    await stack.publish_worker(victim, ready=False, terminating=True)
    await eventually(lambda: not_(routable(stack, victim)), within=5)
    victim_before, other_before = await stack.served(victim), await stack.served(other)
    for _ in range(6):
        await stack.complete()
    assert await stack.served(other) - other_before == 6
    async with stream:
        chunks += [c async for c in stream]
    assert await stack.served(victim) - victim_before == 1  # only the stream that was in flight
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 150

    # Removed: gone from the gateway.
    await stack.api.remove(stack.slice_name(victim))
    await eventually(lambda: absent(stack, victim), within=5)
    counts = await stack.route(4)
    assert counts[stack.workers.index(other)] == 4

    # The last one removed: the model has no endpoint left. It is declared, so a request waits
    # in its queue (for as long as the queue's timeout), and one comes back in time to answer it.
    await stack.api.remove(stack.slice_name(other))
    await eventually(lambda: absent(stack, other), within=5)
    with pytest.raises(openai.APIStatusError) as err:
        await stack.complete()
    assert err.value.status_code == 503
    assert err.value.body["code"] == "queue_timeout"  # type: ignore[index]
    assert err.value.response.headers.get("retry-after")
    held = asyncio.create_task(stack.complete())
    await asyncio.sleep(0.5)
    assert not held.done()
    back = endpoint_slice(f"{stack.slice_name(other)}-back", SERVICE, endpoint("127.0.0.1"), port=other.port)
    await stack.api.create(back)  # a new pod of the model, in a slice of its own
    await held


async def busy_worker(stack: Stack) -> tuple[Proc, Proc]:
    """(the worker running a request now, the other one)."""
    running_now = [await ametric(stack.http, w.url, "vllm:num_requests_running") for w in stack.workers]
    busy = running_now.index(max(running_now))
    assert sorted(running_now) == [0, 1], running_now
    return stack.workers[busy], stack.workers[1 - busy]


async def test_watch_failures_recover_by_relisting(stack: Stack) -> None:
    w1, w2 = stack.workers
    await stack.api.watching()
    await stack.publish_worker(w1)
    await eventually(lambda: routable(stack, w1), within=15)

    # A new worker whose event the watch never delivers, then the stream drops.
    stack.api.deaf = True
    await stack.publish_worker(w2)
    stack.api.deaf = False
    await stack.api.drop_watches()
    await eventually(lambda: routable(stack, w2), within=5)
    assert await stack.route(4) == [2, 2]

    # Its deletion is never delivered either; the watch expires (410 Gone) and the re-list catches up.
    await stack.api.watching()
    stack.api.deaf = True
    await stack.api.remove(stack.slice_name(w2))
    stack.api.deaf = False
    await stack.api.expire_watches()
    await eventually(lambda: absent(stack, w2), within=5)
    assert await stack.route(4) == [4, 0]
    assert "re-listing" in stack.gateway.log()
