"""Cache, dedup, micro-batching and prefix-aware routing, seen through the official ``openai``
client against a real gateway in front of two dry-run workers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL, Stack, start_stack
from tests.support.metrics import ametric, metric
from tests.support.waiting import eventually, wait_workers_idle

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def eff(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Default routing (prefix-aware) and a batching window wide enough for concurrent tests."""
    env = {"VGATE_ROUTING": "prefix-aware", "VGATE_BATCH_WAIT_MS": "100"}
    with ExitStack() as es:
        yield start_stack(es, tmp_path_factory.mktemp("eff"), gateway_env=env)


def _async_client(stack: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _stream(stack: Stack, text: str, include_usage: bool, **extra: Any) -> tuple[str | None, str, Any, str]:
    """(cache header, text, usage, finish_reason) of a streamed chat completion."""
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = stack.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=_messages(text), max_tokens=12, temperature=0, stream=True, **options, **extra
    )
    parts, usage, finish = [], None, ""
    for chunk in raw.parse():
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return raw.headers.get("x-vgate-cache"), "".join(parts), usage, finish


def test_repeated_deterministic_chat_is_a_cache_hit_with_the_same_body(eff: Stack) -> None:
    client = eff.client()
    first = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=_messages("cache me, non-stream"), max_tokens=10, temperature=0
    )
    second = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=_messages("cache me, non-stream"), max_tokens=10, temperature=0
    )
    assert first.headers["x-vgate-cache"] == "miss"
    assert second.headers["x-vgate-cache"] == "hit"
    mine, theirs = json.loads(second.http_response.content), json.loads(first.http_response.content)
    assert mine["id"] != theirs["id"]  # each response its own id, as the worker names them
    assert {k: v for k, v in mine.items() if k not in ("id", "created")} == {
        k: v for k, v in theirs.items() if k not in ("id", "created")
    }


def test_answers_are_never_shared_across_credentials(eff: Stack) -> None:
    def ask(key: str) -> str | None:
        raw = eff.client(api_key=key).chat.completions.with_raw_response.create(
            model=MODEL, messages=_messages("per-tenant question"), max_tokens=5, temperature=0
        )
        return raw.headers.get("x-vgate-cache")

    assert ask("sk-alice") == "miss"
    assert ask("sk-bob") == "miss"  # Bob's worker call is his own, whatever Alice asked
    assert ask("sk-alice") == "hit"


def test_streams_are_cached_and_replayed_as_streams(eff: Stack) -> None:
    miss = _stream(eff, "cache me, streamed", include_usage=True)
    hit = _stream(eff, "cache me, streamed", include_usage=True)
    assert (miss[0], hit[0]) == ("miss", "hit")
    assert hit[1:] == miss[1:]
    assert miss[2] is not None
    assert miss[3] in ("stop", "length")
    # A JSON answer is other bytes than a stream: its own entry, filled by its own call.
    as_json = eff.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=_messages("cache me, streamed"), max_tokens=12, temperature=0
    )
    assert as_json.headers["x-vgate-cache"] == "miss"
    answer = as_json.parse()
    assert answer.choices[0].message.content == miss[1]
    assert answer.usage == miss[2]


def test_a_stream_without_usage_still_fills_the_cache_and_sends_no_usage(eff: Stack) -> None:
    first = _stream(eff, "no usage asked", include_usage=False)
    assert first[0] == "miss"
    assert first[2] is None
    second = _stream(eff, "no usage asked", include_usage=False)
    assert second == ("hit", first[1], None, first[3])


def test_cache_header_bypasses_or_forces(eff: Stack) -> None:
    client = eff.client()

    def ask(temperature: float, mode: str) -> str | None:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=_messages(f"cache header {temperature}"),
            max_tokens=6,
            temperature=temperature,
            extra_headers={"x-vgate-cache": mode},
        )
        return raw.headers.get("x-vgate-cache")

    assert [ask(0, "bypass"), ask(0, "bypass")] == ["miss", "miss"]
    assert [ask(0.9, "force"), ask(0.9, "force")] == ["miss", "hit"]
    assert ask(0.9, "") == "miss"  # sampled answers are not served from the cache by default
    with pytest.raises(openai.BadRequestError, match="x-vgate-cache"):
        ask(0, "sometimes")


async def test_fifty_identical_concurrent_requests_make_one_upstream_call(eff: Stack) -> None:
    client = _async_client(eff)
    before = metric(eff.gateway.internal_url, "vgate_upstream_requests_total", missing=0)
    shared_before = metric(eff.gateway.internal_url, "vgate_deduplicated_requests_total", missing=0)
    hits_before = metric(eff.gateway.internal_url, "vgate_cache_hits_total", missing=0)
    answers = await asyncio.gather(
        *(
            client.chat.completions.create(
                model=MODEL, messages=_messages("everyone asks this"), max_tokens=24, temperature=0
            )
            for _ in range(50)
        )
    )
    assert metric(eff.gateway.internal_url, "vgate_upstream_requests_total") - before == 1
    assert len({a.choices[0].message.content for a in answers}) == 1
    shared = metric(eff.gateway.internal_url, "vgate_deduplicated_requests_total") - shared_before
    # Requests arriving after the call finished are cache hits; there may be none.
    hits = metric(eff.gateway.internal_url, "vgate_cache_hits_total", missing=0) - hits_before
    assert shared > 0
    assert shared + hits == 49  # every request but the one that went upstream
    await client.close()


async def test_identical_concurrent_streams_share_one_upstream_stream(eff: Stack) -> None:
    client = _async_client(eff)
    before = metric(eff.gateway.internal_url, "vgate_upstream_requests_total", missing=0)

    async def one() -> str:
        stream = await client.chat.completions.create(
            model=MODEL, messages=_messages("a shared stream"), max_tokens=24, temperature=0, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    texts = await asyncio.gather(*(one() for _ in range(10)))
    assert metric(eff.gateway.internal_url, "vgate_upstream_requests_total") - before == 1
    assert len(set(texts)) == 1
    assert texts[0]
    await client.close()


async def test_concurrent_completions_are_batched_each_client_gets_its_own(eff: Stack) -> None:
    client = _async_client(eff)
    # One answer first: the gateway merges a model's requests once it knows how it answers.
    await client.completions.create(model=MODEL, prompt="batch warm-up", max_tokens=2, temperature=0.5)
    prompts = [f"batch member {i} says hello" for i in range(6)]
    requests_before = metric(eff.gateway.internal_url, "vgate_batch_size_sum", missing=0)
    batches_before = metric(eff.gateway.internal_url, "vgate_batch_size_count", missing=0)
    answers = await asyncio.gather(
        *(client.completions.create(model=MODEL, prompt=p, max_tokens=8, temperature=0.5) for p in prompts)
    )
    assert metric(eff.gateway.internal_url, "vgate_batch_size_sum") - requests_before == len(prompts)
    upstream_calls = metric(eff.gateway.internal_url, "vgate_batch_size_count") - batches_before
    # The first went at once, alone; those arriving while it ran went together.
    assert 1 <= upstream_calls < len(prompts)
    alone = [
        (await client.completions.create(model=MODEL, prompt=p, max_tokens=8, temperature=0.5))
        .choices[0]
        .text
        for p in prompts
    ]
    assert [a.choices[0].index for a in answers] == [0] * len(prompts)
    assert [a.choices[0].text for a in answers] == alone
    assert all(a.usage is not None and a.usage.prompt_tokens > 0 for a in answers)
    await client.close()


async def test_a_bad_prompt_in_a_batch_fails_alone(eff: Stack) -> None:
    client = _async_client(eff)
    too_long = "word " * 6000  # beyond the worker's 4096-token context

    async def ask(prompt: str) -> Any:
        return await client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0.5)

    results = await asyncio.gather(
        ask("the first fine prompt"), ask(too_long), ask("the second fine prompt"), return_exceptions=True
    )
    assert isinstance(results[1], openai.BadRequestError)
    assert "context length" in str(results[1])
    assert results[0].choices[0].text  # type: ignore[union-attr]
    assert results[2].choices[0].text  # type: ignore[union-attr]
    await client.close()


def test_prefix_aware_keeps_a_shared_system_prompt_on_one_worker(eff: Stack) -> None:
    system = "You are the support assistant of a bicycle shop. " * 30
    client = eff.client()
    before = [u["requests"] for u in httpx.get(eff.gateway.internal_url + "/stats").json()["upstreams"]]
    for i in range(8):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": f"question {i}"}],
            max_tokens=4,
            temperature=0.7,
        )
    after = [u["requests"] for u in httpx.get(eff.gateway.internal_url + "/stats").json()["upstreams"]]
    assert sorted(a - b for a, b in zip(after, before, strict=True)) == [0, 8]


def test_stats_report_cache_dedup_and_batching(eff: Stack) -> None:
    before = httpx.get(eff.gateway.internal_url + "/stats").json()
    eff.client().embeddings.create(model=MODEL, input="stats probe")  # a miss that fills one entry
    eff.client().embeddings.create(model=MODEL, input="stats probe")  # then a hit
    stats = httpx.get(eff.gateway.internal_url + "/stats").json()
    assert stats["cache"]["entries"] - before["cache"]["entries"] == 1
    assert stats["cache"]["hits"] - before["cache"]["hits"] == 1
    assert 0 < stats["cache"]["hit_rate"] <= 1
    # One after the other: nothing was in flight to share.
    assert stats["dedup"] == {"in_flight": 0, "deduplicated": before["dedup"]["deduplicated"]}
    assert stats["batching"]["batch_size"] == 8  # the default VGATE_BATCH_SIZE


def _chat_body(text: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": _messages(text),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,  # exactly max_tokens tokens: long enough for others to join
    }


async def _first_event(resp: httpx.Response) -> AsyncIterator[str]:
    """Read up to the first event; returns the line iterator, which the caller must keep.

    Dropping a half-read httpx line iterator finalizes it, and that closes the connection:
    the client would "leave" right here instead of where the test says it does.
    """
    lines = resp.aiter_lines()
    async for line in lines:
        if line.startswith("data: {"):
            return lines
    raise AssertionError("the stream ended before its first event")


async def _shared(http: httpx.AsyncClient, url: str, shared_before: float) -> bool:
    return await ametric(http, url, "vgate_deduplicated_requests_total", missing=0) > shared_before


async def test_a_follower_stream_survives_the_leader_leaving(eff: Stack) -> None:
    body = _chat_body("the leader leaves early", 400)
    before = metric(eff.gateway.internal_url, "vgate_upstream_requests_total", missing=0)
    shared_before = metric(eff.gateway.internal_url, "vgate_deduplicated_requests_total", missing=0)
    # The same credentials as the openai client's: answers are shared only within one tenant.
    async with httpx.AsyncClient(
        base_url=eff.url, timeout=30, headers={"authorization": "Bearer unused"}
    ) as http:

        async def follow() -> str:
            fields = {k: v for k, v in body.items() if k != "ignore_eos"}
            stream = await _async_client(eff).chat.completions.create(
                **fields, extra_body={"ignore_eos": True}
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        leader = http.stream("POST", "/v1/chat/completions", json=body)
        reading = await _first_event(await leader.__aenter__())
        follower = asyncio.create_task(follow())
        # The gateway has joined the second request to the first one's in-flight call.
        await eventually(lambda: _shared(http, eff.gateway.internal_url, shared_before), within=2)
        await leader.__aexit__(None, None, None)  # the leader's client hangs up mid-stream
        del reading
        text = await follower
    assert metric(eff.gateway.internal_url, "vgate_upstream_requests_total") - before == 1
    fields = {k: v for k, v in body.items() if k != "ignore_eos"}
    again = eff.client().chat.completions.with_raw_response.create(**fields, extra_body={"ignore_eos": True})
    assert again.headers["x-vgate-cache"] == "hit"  # the shared stream ran to its end
    assert "".join(c.choices[0].delta.content or "" for c in again.parse() if c.choices) == text


async def test_the_upstream_stream_closes_when_every_client_has_left(eff: Stack) -> None:
    body = _chat_body("everybody leaves", 2000)
    async with httpx.AsyncClient(base_url=eff.url, timeout=30) as http:
        streams = [http.stream("POST", "/v1/chat/completions", json=body) for _ in range(3)]
        reading = [await _first_event(await stream.__aenter__()) for stream in streams]
        for stream in streams:
            await stream.__aexit__(None, None, None)
        del reading
    wait_workers_idle(eff.workers)
