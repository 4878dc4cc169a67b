"""Ten times the gateway's capacity: it refuses the excess fast and stays whole.

A gateway admitting 4 requests at a time (and queueing 2) in front of two dry-run
workers gets 40 concurrent streams. The excess is refused with OpenAI's 503 and
``Retry-After`` while the admitted streams are still running (so no refusal waited for
capacity); no worker is taken out of rotation, ``/ready`` stays 200, the gateway's
queue never grows past its bound, and afterwards everything is served again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import MODEL, Stack, start_stack
from tests.support.waiting import wait_until

CAPACITY = 4
QUEUE = 2
LOAD = 10 * CAPACITY
STREAM = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me a long story."}],
    "max_tokens": 150,
    "stream": True,
    "ignore_eos": True,
}


@pytest.fixture
def small_gateway(tmp_path: Path) -> Iterator[Stack]:
    env = {
        "VGATE_MAX_INFLIGHT": str(CAPACITY),
        "VGATE_MAX_CONNECTIONS": str(CAPACITY),  # the pool is exactly as large: saturating it is local
        "VGATE_ADMISSION_QUEUE": str(QUEUE),
        "VGATE_DEDUP": "false",
    }
    with ExitStack() as es:
        yield start_stack(es, tmp_path, gateway_env=env)


@dataclass
class Outcome:
    status: int
    finished_at: float
    body: bytes
    retry_after: str | None


async def _one(client: httpx.AsyncClient, url: str) -> Outcome:
    async with client.stream("POST", f"{url}/v1/chat/completions", json=STREAM) as r:
        body = await r.aread()
    return Outcome(r.status_code, time.monotonic(), body, r.headers.get("retry-after"))


async def _watch(client: httpx.AsyncClient, url: str, stop: asyncio.Event) -> list[tuple[int, dict]]:
    """/ready and /stats, polled while the load runs."""
    seen = []
    while not stop.is_set():
        ready = await client.get(f"{url}/ready")
        stats = (await client.get(f"{url}/stats")).json()
        seen.append((ready.status_code, stats))
        await asyncio.sleep(0.05)
    return seen


async def _overload(url: str) -> tuple[list[Outcome], list[tuple[int, dict]]]:
    limits = httpx.Limits(max_connections=LOAD + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch(client, url, stop))
        outcomes = await asyncio.gather(*(_one(client, url) for _ in range(LOAD)))
        stop.set()
        return list(outcomes), await watcher


def test_ten_times_capacity_is_refused_fast_and_the_gateway_stays_whole(small_gateway: Stack) -> None:
    stack = small_gateway
    outcomes, seen = asyncio.run(_overload(stack.url))

    served = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status != 200]
    assert len(served) >= CAPACITY
    assert len(refused) >= LOAD - CAPACITY - QUEUE - CAPACITY  # a few may get slots freed meanwhile
    for o in refused:
        assert o.status == 503
        assert o.retry_after == "1"
        assert b'"code":"gateway_overloaded"' in o.body
        assert b'"type":"service_unavailable_error"' in o.body
    for o in served:
        assert o.body.rstrip().endswith(b"data: [DONE]")
    # Refused while the admitted streams were still running: no refusal waited for capacity.
    assert max(o.finished_at for o in refused) < min(o.finished_at for o in served)

    assert seen, "the gateway was never polled during the load"
    assert all(status == 200 for status, _ in seen)  # /ready stayed 200 throughout
    for _, stats in seen:
        assert stats["admission"]["inflight"] <= CAPACITY
        assert stats["admission"]["queued"] <= QUEUE  # memory bounded: nothing piles up
        assert all(u["healthy"] for u in stats["upstreams"])  # no healthy worker ejected
    final = httpx.get(f"{stack.url}/stats").json()
    assert all(u["ejections"] == 0 for u in final["upstreams"])
    assert final["admission"]["rejected"] == len(refused)

    # Full recovery: the same gateway serves normally once the burst is over.
    wait_until(lambda: httpx.get(f"{stack.url}/stats").json()["admission"]["inflight"] == 0, what="idle")
    recovered = asyncio.run(_few(stack.url, CAPACITY))
    assert [o.status for o in recovered] == [200] * CAPACITY


async def _few(url: str, n: int) -> list[Outcome]:
    async with httpx.AsyncClient(timeout=60) as client:
        return list(await asyncio.gather(*(_one(client, url) for _ in range(n))))
