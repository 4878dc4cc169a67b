"""Simulators built in one process are independent: no state outside the app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
from fastapi import FastAPI

from vgate_worker.sim.app import build_app
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
