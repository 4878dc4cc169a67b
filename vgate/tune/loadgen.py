"""V-Gate's own load generator: streamed ``/v1/completions`` at a fixed concurrency or a Poisson rate.

The tuner drives load with ``vllm bench serve`` where vLLM is installed (``--loadgen
vllm-bench``; docs/tune.md says why that tool). This one exists for what none of the field's
tools can do without a multi-gigabyte install and a Hugging Face tokenizer: run in the light
``.venv`` that ``make test`` builds, against the simulator. It measures exactly as vLLM's does
(see measure.py), and the real-vLLM benchmark runs both on one configuration to show they agree.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import httpx
import orjson

from vgate.tune.measure import RequestRecord
from vgate.tune.scenario import Shape

# Words the tiny test model's tokenizer (hack/tiny_model.py) and the simulator's both count as
# one token each, so a synthesised prompt of N words is close to N tokens on either.
_WORDS = [
    "the",
    "gateway",
    "routes",
    "each",
    "request",
    "to",
    "a",
    "healthy",
    "worker",
    "and",
    "relays",
    "its",
    "answer",
    "caching",
    "lets",
    "repeated",
    "prompts",
    "skip",
    "work",
    "the",
    "engine",
    "has",
    "already",
    "done",
    "run",
    "with",
    "weights",
    "four",
    "bits",
    "per",
    "value",
    "one",
    "scale",
    "per",
    "group",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "while",
    "cat",
    "sleeps",
    "in",
    "sun",
]


def synthesise(tokens: int, rng: random.Random) -> str:
    """A prompt of about ``tokens`` tokens; random words, so no two prompts share a prefix."""
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, tokens)))


async def _one(client: httpx.AsyncClient, model: str, prompt: str, shape: Shape, t0: float) -> RequestRecord:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": shape.output_tokens,
        "ignore_eos": True,  # every request writes exactly the tokens its shape asks for
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft: float | None = None
    chunks = 0
    usage: dict[str, int] = {}
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:300]
                return RequestRecord(
                    start - t0, None, time.perf_counter() - start, 0, 0, f"{response.status_code} {text}"
                )
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = orjson.loads(line[6:])
                if "error" in event:
                    return RequestRecord(
                        start - t0, ttft, time.perf_counter() - start, 0, 0, str(event["error"])
                    )
                if event.get("choices") and event["choices"][0].get("text"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - start
                usage = event.get("usage") or usage
    except httpx.HTTPError as exc:
        return RequestRecord(
            start - t0, ttft, time.perf_counter() - start, 0, 0, f"{type(exc).__name__}: {exc}"
        )
    return RequestRecord(
        start=start - t0,
        ttft=ttft,
        e2e=time.perf_counter() - start,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        output_tokens=int(usage.get("completion_tokens", chunks)),
    )


async def run_level(
    base_url: str,
    model: str,
    shapes: Sequence[Shape],
    kind: str,
    level: float,
    seed: int,
    timeout_s: float = 600.0,
) -> list[RequestRecord]:
    """Send ``shapes`` at ``level`` clients (``kind`` concurrency) or requests/s (``rate``)."""
    rng = random.Random(seed)
    prompts = [s.prompt or synthesise(s.prompt_tokens, rng) for s in shapes]
    limits = httpx.Limits(max_connections=max(64, int(level) * 2), max_keepalive_connections=64)
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        t0 = time.perf_counter()
        if kind == "concurrency":
            return await _closed_loop(client, model, prompts, shapes, int(level), t0)
        return await _open_loop(client, model, prompts, shapes, level, rng, t0)


async def _closed_loop(
    client: httpx.AsyncClient,
    model: str,
    prompts: list[str],
    shapes: Sequence[Shape],
    clients: int,
    t0: float,
) -> list[RequestRecord]:
    queue = list(range(len(shapes)))
    queue.reverse()
    records: list[RequestRecord] = []

    async def user() -> None:
        while queue:
            i = queue.pop()
            records.append(await _one(client, model, prompts[i], shapes[i], t0))

    await asyncio.gather(*(user() for _ in range(clients)))
    return records


async def _open_loop(
    client: httpx.AsyncClient,
    model: str,
    prompts: list[str],
    shapes: Sequence[Shape],
    rate: float,
    rng: random.Random,
    t0: float,
) -> list[RequestRecord]:
    tasks = []
    due = 0.0
    for prompt, shape in zip(prompts, shapes, strict=True):
        await asyncio.sleep(max(0.0, t0 + due - time.perf_counter()))
        tasks.append(asyncio.create_task(_one(client, model, prompt, shape, t0)))
        due += rng.expovariate(rate)  # Poisson arrivals, as vllm bench serve sends them
    return list(await asyncio.gather(*tasks))
