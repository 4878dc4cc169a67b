"""Simulators built in one process are independent: no state outside the app."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
from fastapi import FastAPI

from vgate_worker.sim.app import build_app
from vgate_worker.sim.protocol import VOCAB_SIZE
from vgate_worker.sim.settings import SimSettings

pytestmark = pytest.mark.timeout(20)


async def started(stack: AsyncExitStack, app: FastAPI) -> httpx.AsyncClient:
    await stack.enter_async_context(app.router.lifespan_context(app))
    transport = httpx.ASGITransport(app=app)
    return await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://sim"))


@pytest.fixture
async def two() -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with AsyncExitStack() as stack:
        a = await started(stack, build_app(SimSettings(served_model_name=["a"], speed=100)))
        b = await started(stack, build_app(SimSettings(served_model_name=["b"], speed=100)))
        yield a, b


async def test_two_simulators_keep_separate_state(two: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    a, b = two
    r = await a.post("/v1/completions", json={"model": "a", "prompt": "one two three", "max_tokens": 5})
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] == 5
    assert (await b.post("/v1/completions", json={"model": "a", "prompt": "x"})).status_code == 404
    metrics_a, metrics_b = (await a.get("/metrics")).text, (await b.get("/metrics")).text
    assert 'vllm:generation_tokens_total{model_name="a"} 5.0' in metrics_a
    assert 'vllm:generation_tokens_total{model_name="b"} 0.0' in metrics_b
    assert (await a.get("/health")).status_code == 200


async def test_continuous_usage_counts_up_per_chunk(two: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    a, _ = two
    body = {
        "model": "a", "prompt": "one two three", "max_tokens": 4, "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }  # fmt: skip
    r = await a.post("/v1/completions", json=body)
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    usages = [c["usage"] for c in chunks]
    assert [u["completion_tokens"] for u in usages] == [1, 2, 3, 4, 4]
    assert len({u["prompt_tokens"] for u in usages}) == 1
    assert all(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] for u in usages)


async def test_token_ids_outside_the_vocabulary_are_a_400(
    two: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, _ = two
    r = await a.post("/v1/completions", json={"model": "a", "prompt": [1, 2, VOCAB_SIZE], "max_tokens": 1})
    assert r.status_code == 400
    assert f"Token id {VOCAB_SIZE} is out of vocabulary" in r.json()["error"]["message"]
    ok = await a.post(
        "/v1/completions", json={"model": "a", "prompt": [1, 2, VOCAB_SIZE - 1], "max_tokens": 1}
    )
    assert ok.status_code == 200
