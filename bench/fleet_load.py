"""The fleet benchmark's client side: open-loop streamed chat requests, each timed to its first token.

Each request is sent at its scheduled arrival time, whether or not earlier ones have
finished (open loop: a slow system is not spared load), and its time to first token is
counted from that scheduled moment, so a late send (the client's own lag) is never hidden.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from vgate_worker.settings import DEFAULT_MODEL

_WORDS = [
    "parcel",
    "invoice",
    "harbor",
    "ledger",
    "freight",
    "tariff",
    "vessel",
    "manifest",
    "route",
    "quota",
]


@dataclass(frozen=True)
class Outcome:
    """One request: when it was due (trace seconds), its time to first token, and how it ended."""

    at: float
    ttft_s: float | None
    #: ``ok``; ``refused`` (the gateway's 503/429 with an OpenAI error: queue full or waited
    #: out, admission); ``failed`` (anything else: another status, a broken or empty stream).
    result: str
    detail: str = ""


def chat_body(index: int, prompt_words: int, output_tokens: int) -> dict[str, Any]:
    """A streamed chat request of fixed size: ``prompt_words`` words in, exactly ``output_tokens`` out.

    Sampled (temperature 0.7) and numbered, so neither the cache nor dedup serves it.
    """
    words = " ".join(_WORDS[(index + i) % len(_WORDS)] for i in range(prompt_words))
    return {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": f"request {index}: {words}"}],
        "max_tokens": output_tokens,
        "ignore_eos": True,
        "temperature": 0.7,
        "stream": True,
    }


async def _one(client: httpx.AsyncClient, body: dict[str, Any], due: float, t0: float) -> Outcome:
    at = due - t0
    first: float | None = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                refused = resp.status_code in (429, 503) and '"error"' in text
                return Outcome(
                    at, None, "refused" if refused else "failed", f"{resp.status_code} {text[:160]}"
                )
            done = False
            async for line in resp.aiter_lines():
                if first is None and line.startswith("data: {") and _has_text(json.loads(line[6:])):
                    first = time.monotonic() - due
                done = done or line == "data: [DONE]"
    except httpx.HTTPError as exc:
        return Outcome(at, first, "failed", f"{type(exc).__name__}: {exc}")
    if first is None or not done:
        return Outcome(at, first, "failed", "the stream ended without text or [DONE]")
    return Outcome(at, first, "ok")


def _has_text(chunk: dict[str, Any]) -> bool:
    return any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or [])


async def drive(
    url: str, times: Sequence[float], t0: float, prompt_words: int, output_tokens: int, timeout_s: float
) -> list[Outcome]:
    """Send one request at ``t0 + times[i]`` (monotonic clock) for each i; every outcome, in order."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        tasks = []
        for i, at in enumerate(times):
            due = t0 + at
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body = chat_body(i, prompt_words, output_tokens)
            tasks.append(asyncio.create_task(_one(client, body, due, t0)))
        return list(await asyncio.gather(*tasks))


async def closed_loop(
    url: str, clients: int, seconds: float, warm_s: float, prompt_words: int, output_tokens: int
) -> float:
    """``clients`` back-to-back streams for ``warm_s + seconds``: completions per second after the warm-up.

    With as many clients as a worker's batch, the worker runs at its batch limit and nothing
    queues: the rate is the worker's capacity for this workload.
    """
    #: Per client: (start, end) of each request begun after the warm-up.
    spans: list[list[tuple[float, float]]] = [[] for _ in range(clients)]
    begin = time.monotonic()
    deadline = begin + warm_s + seconds

    async def loop(client: httpx.AsyncClient, k: int) -> None:
        i = k
        while time.monotonic() < deadline:
            body = chat_body(i, prompt_words, output_tokens)
            started = time.monotonic()
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                r.raise_for_status()
                async for _ in r.aiter_lines():
                    pass
            if started >= begin + warm_s:
                spans[k].append((started, time.monotonic()))
            i += clients

    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        await asyncio.gather(*(loop(client, k) for k in range(clients)))
    # Each client's requests over the time it spent on them, summed: exact even when the
    # clients finish in lockstep, as a batch of equal requests does (a window would count
    # whole batches or none).
    return sum(len(s) / (s[-1][1] - s[0][0]) for s in spans if s)
