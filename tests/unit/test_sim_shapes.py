"""The simulator's answers have vLLM's shape: a null where vLLM writes one, no key where it leaves one out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from vgate_worker.sim.app import build_app
from vgate_worker.sim.settings import SimSettings

pytestmark = pytest.mark.timeout(20)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "one two three four"}], "max_tokens": 3}
COMPLETION = {"model": "m", "prompt": "one two three four", "max_tokens": 3}
COUNTS = {"prompt_tokens", "completion_tokens", "total_tokens"}


async def _client(stack: AsyncExitStack, **settings: Any) -> httpx.AsyncClient:
    app = build_app(SimSettings(served_model_name=["m"], speed=100, **settings))
    await stack.enter_async_context(app.router.lifespan_context(app))
    transport = httpx.ASGITransport(app=app)
    return await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://sim"))


@pytest.fixture
async def plain() -> AsyncIterator[httpx.AsyncClient]:
    async with AsyncExitStack() as stack:
        yield await _client(stack)


@pytest.fixture
async def details() -> AsyncIterator[httpx.AsyncClient]:
    async with AsyncExitStack() as stack:
        yield await _client(stack, enable_prompt_tokens_details=True)


async def _chunks(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    reply = await client.post(path, json=body)
    assert reply.status_code == 200
    lines = [line[6:] for line in reply.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def _streamed(body: dict[str, Any], **options: bool) -> dict[str, Any]:
    return {**body, "stream": True, "stream_options": {"include_usage": True, **options}}


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
async def test_a_streams_usage_chunk_leaves_prompt_tokens_details_out_when_they_are_off(
    plain: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    last = (await _chunks(plain, path, _streamed(body)))[-1]
    assert last["choices"] == []
    assert set(last["usage"]) == COUNTS  # never "prompt_tokens_details": null
    assert last["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
async def test_a_streams_usage_chunk_reports_cached_tokens_when_details_are_on(
    details: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    usage = (await _chunks(details, path, _streamed(body)))[-1]["usage"]
    assert set(usage) == COUNTS | {"prompt_tokens_details"}
    assert isinstance(usage["prompt_tokens_details"]["cached_tokens"], int)


@pytest.mark.parametrize("with_details", [False, True])
async def test_running_usage_holds_the_counts_only(with_details: bool) -> None:
    async with AsyncExitStack() as stack:
        client = await _client(stack, enable_prompt_tokens_details=with_details)
        chunks = await _chunks(client, "/v1/chat/completions", _streamed(CHAT, continuous_usage_stats=True))
    running = [c["usage"] for c in chunks if c["choices"] and "usage" in c]
    assert [u["completion_tokens"] for u in running] == [1, 2, 3]
    assert all(set(u) == COUNTS for u in running)


async def test_a_response_body_carries_a_null_prompt_tokens_details_as_vllm_dumps_it(
    plain: httpx.AsyncClient, details: httpx.AsyncClient
) -> None:
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
        assert (await plain.post(path, json=body)).json()["usage"]["prompt_tokens_details"] is None
        cached = (await details.post(path, json=body)).json()["usage"]["prompt_tokens_details"]
        assert set(cached) == {"cached_tokens"}
    embedded = await plain.post("/v1/embeddings", json={"model": "m", "input": "one two"})
    assert embedded.json()["usage"] == {
        "prompt_tokens": 2, "total_tokens": 2, "completion_tokens": 0, "prompt_tokens_details": None,
    }  # fmt: skip


async def test_chat_chunks_carry_stop_reason_on_the_last_one_only(plain: httpx.AsyncClient) -> None:
    chunks = await _chunks(plain, "/v1/chat/completions", {**CHAT, "stream": True})
    choices = [c["choices"][0] for c in chunks]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    assert all("stop_reason" not in c for c in choices[:-1])
    assert choices[-1]["finish_reason"] == "length"
    assert "stop_reason" in choices[-1]
