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
from typing import Any

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


@dataclass
class Overload:
    stack: Stack
    served: list[Outcome]
    refused: list[Outcome]
    #: (/ready status, /stats) polled while the load ran.
    seen: list[tuple[int, dict[str, Any]]]


@pytest.fixture(scope="module")
def overload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overload]:
    """One gateway admitting 4 (queueing 2), hit once by 40 concurrent streams."""
    env = {
        "VGATE_MAX_INFLIGHT": str(CAPACITY),
        "VGATE_MAX_CONNECTIONS": str(CAPACITY),  # the pool is exactly as large: saturating it is local
        "VGATE_ADMISSION_QUEUE": str(QUEUE),
        "VGATE_DEDUP": "false",
    }
    with ExitStack() as es:
        stack = start_stack(es, tmp_path_factory.mktemp("overload"), gateway_env=env)
        outcomes, seen = asyncio.run(_overload(stack.url, stack.gateway.internal_url))
        served = [o for o in outcomes if o.status == 200]
        refused = [o for o in outcomes if o.status != 200]
        yield Overload(stack, served, refused, seen)


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


async def _watch(
    client: httpx.AsyncClient, url: str, stop: asyncio.Event, internal: str
) -> list[tuple[int, dict[str, Any]]]:
    """/ready and /stats (internal port), polled while the load runs."""
    seen = []
    while not stop.is_set():
        ready = await client.get(f"{url}/ready")
        stats = (await client.get(f"{internal}/stats")).json()
        seen.append((ready.status_code, stats))
        await asyncio.sleep(0.05)
    return seen


async def _overload(url: str, internal: str) -> tuple[list[Outcome], list[tuple[int, dict[str, Any]]]]:
    limits = httpx.Limits(max_connections=LOAD + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch(client, url, stop, internal))
        outcomes = await asyncio.gather(*(_one(client, url) for _ in range(LOAD)))
        stop.set()
        return list(outcomes), await watcher


def test_the_excess_is_refused_at_once_in_openai_shape(overload: Overload) -> None:
    assert len(overload.served) >= CAPACITY
    assert len(overload.refused) >= LOAD - CAPACITY - QUEUE - CAPACITY  # a few may get slots freed meanwhile
    for o in overload.refused:
        assert o.status == 503
        assert o.retry_after == "1"
        assert b'"code":"gateway_overloaded"' in o.body
        assert b'"type":"service_unavailable_error"' in o.body
    for o in overload.served:
        assert o.body.rstrip().endswith(b"data: [DONE]")
    # Refused while the admitted streams were still running: no refusal waited for capacity
    # (the queue's own wait is bounded by VGATE_ADMISSION_QUEUE_TIMEOUT_S, 50 ms).
    assert max(o.finished_at for o in overload.refused) < min(o.finished_at for o in overload.served)


def test_no_healthy_worker_is_ejected(overload: Overload) -> None:
    assert overload.seen, "the gateway was never polled during the load"
    for _, stats in overload.seen:
        assert all(u["healthy"] for u in stats["upstreams"])
    final = httpx.get(f"{overload.stack.gateway.internal_url}/stats").json()
    assert all(u["ejections"] == 0 for u in final["upstreams"])
    assert final["admission"]["rejected"] == len(overload.refused)


def test_ready_stays_200_throughout(overload: Overload) -> None:
    assert overload.seen
    assert all(status == 200 for status, _ in overload.seen)


def test_memory_is_bounded_nothing_piles_up(overload: Overload) -> None:
    for _, stats in overload.seen:
        assert stats["admission"]["inflight"] <= CAPACITY
        assert stats["admission"]["queued"] <= QUEUE


def test_full_recovery_afterwards(overload: Overload) -> None:
    url = overload.stack.url
    internal = overload.stack.gateway.internal_url
    wait_until(lambda: httpx.get(f"{internal}/stats").json()["admission"]["inflight"] == 0, what="idle")
    recovered = asyncio.run(_few(url, CAPACITY))
    assert [o.status for o in recovered] == [200] * CAPACITY
    assert httpx.get(f"{url}/ready").status_code == 200


async def _few(url: str, n: int) -> list[Outcome]:
    async with httpx.AsyncClient(timeout=60) as client:
        return list(await asyncio.gather(*(_one(client, url) for _ in range(n))))
