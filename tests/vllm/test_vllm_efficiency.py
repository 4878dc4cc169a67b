"""Cache, dedup, micro-batching and cancellation in front of two real vLLM workers.

A gateway of this module's own (prefix-aware routing, a batching window wide enough for
concurrent tests) sits in front of the tier's two workers; vLLM's own counters are the
judge: its request counts, its ``num_requests_running``, its answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.support.metrics import ametric, metric
from tests.support.procs import Proc, make_proc, running
from tests.support.waiting import eventually
from tests.vllm.conftest import LONGEST_ANSWER, VllmStack

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

#: The worker stops generating within this long of the client leaving.
CANCELLED_WITHIN_S = 1.0
#: Tests that act while a long answer is written redo their try, up to this many times, when a
#: slow moment of the machine outlasted that answer: such a try says nothing either way.
TRIES = 3
_BYPASS = {"x-vgate-cache": "bypass"}


@pytest.fixture(scope="module")
def gateway(vllm_stack: VllmStack) -> Iterator[Proc]:
    endpoints = [arg for w in vllm_stack.workers for arg in ("--endpoint", w.url)]
    env = {"VGATE_HEALTH_INTERVAL_S": "0.5", "VGATE_BATCH_WAIT_MS": "1000", "VGATE_BATCH_SIZE": "3"}
    proc = make_proc(["gateway", *endpoints], vllm_stack.tmp_path, env=env, name="gateway-efficiency")
    with running([proc], ready_path="/ready", timeout=60):
        yield proc


@asynccontextmanager
async def _http(gateway: Proc) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=300) as http:
        yield http


def _served(stack: VllmStack) -> float:
    return sum(metric(w.url, "vllm:request_success_total", missing=0) for w in stack.workers)


async def _running(http: httpx.AsyncClient, stack: VllmStack) -> float:
    return sum([await ametric(http, w.url, "vllm:num_requests_running") for w in stack.workers])


def _unstamped(obj: Any) -> Any:
    return {k: v for k, v in obj.items() if k not in ("id", "created")} if isinstance(obj, dict) else obj


def _events(raw: bytes) -> list[Any]:
    return [
        block[6:] if block == "data: [DONE]" else _unstamped(json.loads(block[6:]))
        for block in raw.decode().split("\n\n")
        if block.startswith("data: ")
    ]


def _text(raw: bytes) -> str:
    return "".join(
        (c.get("delta") or {}).get("content") or ""
        for e in _events(raw)
        if isinstance(e, dict)
        for c in e.get("choices") or []
    )


async def test_identical_in_flight_requests_make_one_vllm_request(
    vllm_stack: VllmStack, gateway: Proc
) -> None:
    body = {"model": vllm_stack.model, "prompt": "The gateway routes", "max_tokens": 48, "temperature": 0}
    before = _served(vllm_stack)
    async with _http(gateway) as http:
        replies = await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(6)))
    assert [r.status_code for r in replies] == [200] * 6
    assert _served(vllm_stack) - before == 1
    assert len({json.dumps(_unstamped(r.json()), sort_keys=True) for r in replies}) == 1
    assert len({r.json()["id"] for r in replies}) == 6  # each response under its own id


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="json"),
        pytest.param({"stream": True, "stream_options": {"include_usage": True}}, id="stream"),
        pytest.param(
            {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
            id="stream-continuous-usage",
        ),
    ],
)
async def test_a_cached_replay_is_vllms_own_answer(
    vllm_stack: VllmStack, gateway: Proc, extra: dict[str, Any]
) -> None:
    body = {
        "model": vllm_stack.model,
        "messages": [{"role": "user", "content": f"Say hello {sorted(extra)}"}],
        "max_tokens": 10,
        "temperature": 0,
        **extra,
    }
    async with _http(gateway) as http:
        worker = vllm_stack.workers[0].url
        own = await http.post(worker + "/v1/chat/completions", json=body, headers={"x-request-id": "own"})
        miss = await http.post("/v1/chat/completions", json=body, headers={"x-request-id": "miss"})
        hit = await http.post("/v1/chat/completions", json=body, headers={"x-request-id": "hit"})
    assert [miss.headers["x-vgate-cache"], hit.headers["x-vgate-cache"]] == ["miss", "hit"]
    if extra:
        # vLLM cuts a stream into chunks as its output loop keeps up, so two runs of one greedy
        # request may chunk differently: the replay is judged against the stream that filled it.
        assert _events(hit.content) == _events(miss.content)
        assert _text(hit.content) == _text(own.content)
        assert json.loads(hit.content.split(b"\n\n")[0][6:])["id"] == "chatcmpl-hit"
    else:
        assert _unstamped(hit.json()) == _unstamped(own.json())
        assert hit.json()["id"] == "chatcmpl-hit"


async def test_merged_completions_get_the_usage_and_text_they_get_alone(
    vllm_stack: VllmStack, gateway: Proc
) -> None:
    model = vllm_stack.model
    prompts = ["Hi", "The quick brown fox jumps over the lazy dog while the cat", "Numbers: 0 1 2"]
    bodies = [{"model": model, "prompt": p, "max_tokens": 12, "temperature": 0, "seed": 1} for p in prompts]
    async with _http(gateway) as http:
        warm = {"model": model, "prompt": "warm up", "max_tokens": 2, "temperature": 0.5}
        (await http.post("/v1/completions", json=warm)).raise_for_status()
        for _ in range(TRIES):
            outcome = await _while_busy(http, vllm_stack, gateway, bodies)
            if outcome is not None:
                break
        else:
            pytest.fail(f"the busy request ended before the three were answered, {TRIES} times")
        merged_calls, together = outcome
        alone = [await http.post("/v1/completions", json=b, headers=_BYPASS) for b in bodies]
    assert merged_calls == 1  # the three went to vLLM as one list request
    for mine, theirs in zip(together, alone, strict=True):
        assert _unstamped(mine.json()) == _unstamped(theirs.json())


async def _while_busy(
    http: httpx.AsyncClient, stack: VllmStack, gateway: Proc, bodies: list[dict[str, Any]]
) -> tuple[float, list[httpx.Response]] | None:
    """Send ``bodies`` together while the model is busy with another answer.

    The batcher merges only while the model is busy, so the try counts only if that answer
    was still being written when all of ``bodies`` were answered: then it returns how many
    upstream calls they took and their answers, else None.
    """
    long = {
        "model": stack.model,
        "prompt": "busy",
        "max_tokens": LONGEST_ANSWER,
        "temperature": 0.5,
        "ignore_eos": True,
    }
    busy = await _in_flight(http, gateway, long)
    if busy is None:
        return None
    try:
        before = await ametric(http, gateway.internal_url, "vgate_batch_size_count", missing=0)
        together = await asyncio.gather(
            *(http.post("/v1/completions", json=b, headers=_BYPASS) for b in bodies)
        )
        calls = await ametric(http, gateway.internal_url, "vgate_batch_size_count") - before
        still_busy = not busy.done()
    finally:
        busy.cancel()
        await asyncio.gather(busy, return_exceptions=True)
        await eventually(lambda: _idle(http, stack), within=30)
    return (calls, together) if still_busy else None


async def _in_flight(
    http: httpx.AsyncClient, gateway: Proc, body: dict[str, Any], sender: httpx.AsyncClient | None = None
) -> asyncio.Task[httpx.Response] | None:
    """Send ``body`` (through ``sender``, else ``http``) and wait until the gateway's call to a worker for it is in flight.

    The gateway's own view (cheap, local) is asked. None if the whole answer came back first
    (an answer that is an error fails the test instead).
    """
    sent = asyncio.create_task((sender or http).post("/v1/completions", json=body))
    await eventually(lambda: sent.done() or _routed(http, gateway), within=60)
    if sent.done():
        (await sent).raise_for_status()
        return None
    return sent


async def _routed(http: httpx.AsyncClient, gateway: Proc) -> bool:
    """Whether the gateway has a call in flight to a worker (its /stats, on the internal port)."""
    stats = (await http.get(f"{gateway.internal_url}/stats")).json()
    return sum(u["inflight"] for u in stats["upstreams"]) > 0


async def _generated(http: httpx.AsyncClient, stack: VllmStack) -> float:
    return sum([await ametric(http, w.url, "vllm:generation_tokens_total") for w in stack.workers])


async def _idle(http: httpx.AsyncClient, stack: VllmStack) -> bool:
    return await _running(http, stack) == 0


@pytest.mark.parametrize("temperature", [0, 1])
async def test_a_client_leaving_a_completion_stops_vllm(
    vllm_stack: VllmStack, gateway: Proc, temperature: int
) -> None:
    async with _http(gateway) as http:
        for attempt in range(TRIES):
            body = {
                "model": vllm_stack.model,
                # A prompt of its own each try: a finished try's answer may be in the cache.
                "prompt": f"leave at temperature {temperature}, try {attempt}",
                "max_tokens": LONGEST_ANSWER,
                "temperature": temperature,
                "ignore_eos": True,
            }
            await eventually(lambda: _idle(http, vllm_stack), within=30)
            generated_before = await _generated(http, vllm_stack)
            # The leaving client has a connection of its own and closes it when it leaves: a
            # cancelled request alone may leave its connection open in the client's pool, and
            # then the gateway cannot know the client is gone until it answers.
            client = httpx.AsyncClient(base_url=gateway.url, timeout=300)
            leaving = await _in_flight(http, gateway, body, sender=client)
            if leaving is not None:
                break
            await client.aclose()
        else:
            pytest.fail(f"the whole answer came back before the gateway was seen sending it, {TRIES} times")
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
        await client.aclose()
        await eventually(lambda: _idle(http, vllm_stack), within=CANCELLED_WITHIN_S)
        generated = await _generated(http, vllm_stack) - generated_before
    # vLLM stopped early instead of writing the whole answer for nobody.
    assert generated < LONGEST_ANSWER
