"""The dry-run worker's capacity model seen from outside: prefix caching, queueing, cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import Proc, vgate_process
from tests.support.waiting import wait_until
from vgate_worker.settings import DEFAULT_MODEL

pytestmark = pytest.mark.timeout(60)

MODEL = DEFAULT_MODEL
# About 3,000 tokens: ~150 ms of prefill at the default 20k tokens/s, ~0 when cached.
LONG_SYSTEM = "You are a meticulous assistant. " + " ".join(f"rule{i} applies." for i in range(1000))


def scrape(url: str) -> dict[str, float]:
    values = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            values.setdefault(sample.name, float(sample.value))
    return values


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    # Real-time speed: the prefill cost is the effect under test.
    with vgate_process(["worker", "--dry-run"], Path(tmp_path_factory.mktemp("sim"))) as proc:
        yield proc


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    args = ["worker", "--dry-run", "--max-num-seqs", "2"]
    with vgate_process(args, Path(tmp_path_factory.mktemp("small"))) as proc:
        yield proc


def ttft(client: openai.OpenAI, question: str) -> float:
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": question}],
        max_tokens=4,
        stream=True,
    )
    with stream:
        next(iter(stream))
        elapsed = time.perf_counter() - start
        for _ in stream:
            pass
    return elapsed


def test_repeated_system_prompt_is_served_from_the_prefix_cache(sim: Proc) -> None:
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0) as client:
        client.models.list()  # the connection is open before anything is timed
        before = scrape(sim.url)
        cold = ttft(client, "first question")
        after_cold = scrape(sim.url)
        warm = ttft(client, "second question")
        after_warm = scrape(sim.url)
    assert warm < cold / 2, f"warm TTFT {warm:.4f}s is not clearly below cold {cold:.4f}s"
    cold_hits = after_cold["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    warm_hits = after_warm["vllm:prefix_cache_hits_total"] - after_cold["vllm:prefix_cache_hits_total"]
    assert warm_hits > cold_hits + 2500
    queried = after_warm["vllm:prefix_cache_queries_total"] - after_cold["vllm:prefix_cache_queries_total"]
    assert warm_hits <= queried
    ttft_count = "vllm:time_to_first_token_seconds_count"
    assert after_warm[ttft_count] - before[ttft_count] == 2


async def test_requests_beyond_max_num_seqs_wait(small: Proc) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> str | None:
        r = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"request {i}"}],
            max_tokens=300,
            extra_body={"ignore_eos": True},
        )
        return r.choices[0].finish_reason

    async with (
        openai.AsyncOpenAI(base_url=small.url + "/v1", api_key="unused", max_retries=0) as client,
        httpx.AsyncClient() as http,
    ):
        tasks = [asyncio.ensure_future(one(client, i)) for i in range(4)]
        seen: list[tuple[float, float]] = []
        while not all(t.done() for t in tasks):
            text = (await http.get(small.url + "/metrics")).text
            values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
            seen.append((values["vllm:num_requests_running"], values["vllm:num_requests_waiting"]))
            await asyncio.sleep(0.02)
        reasons = await asyncio.gather(*tasks)
    assert reasons == ["length"] * 4
    assert max(r for r, _ in seen) == 2
    assert (2, 2) in seen
    assert scrape(small.url)["vllm:num_requests_waiting"] == 0


def test_client_disconnect_cancels_the_request(small: Proc) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "a very long answer please"}],
        "stream": True,
        "max_tokens": 4000,
        "ignore_eos": True,
    }
    before = scrape(small.url)["vllm:generation_tokens_total"]
    with httpx.stream("POST", small.url + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        assert scrape(small.url)["vllm:num_requests_running"] == 1
    wait_until(
        lambda: not scrape(small.url)["vllm:num_requests_running"], within=5, what="the request to leave"
    )
    after = scrape(small.url)
    assert after["vllm:num_requests_running"] == 0
    assert after["vllm:kv_cache_usage_perc"] == 0
    generated = after["vllm:generation_tokens_total"] - before
    time.sleep(0.3)
    assert scrape(small.url)["vllm:generation_tokens_total"] - before == generated < 4000
