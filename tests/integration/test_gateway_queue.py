"""The model queue with real processes: held from zero, dispatched at a saturated worker's pace, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import MODEL, WORKER_ARGS
from tests.support.procs import Proc, make_proc, running, vgate_process
from tests.support.waiting import eventually

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 24}


@dataclass
class Elastic:
    """A gateway that knows its model, in front of whatever workers its endpoints file lists."""

    gateway: Proc
    endpoints: Path
    tmp_path: Path
    stack: ExitStack

    def add_worker(self, *extra: str) -> Proc:
        proc = make_proc([*WORKER_ARGS, *extra], self.tmp_path, name="worker")
        (worker,) = self.stack.enter_context(running([proc]))
        listed = self.endpoints.read_text()
        self.endpoints.write_text(listed + worker.url + "\n")
        return worker

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.gateway.internal_url}/stats").json()

    def load(self) -> dict[str, Any]:
        return httpx.get(f"{self.gateway.internal_url}/load").json()["models"]


@pytest.fixture
def elastic(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Elastic]:
    env = getattr(request, "param", {})
    endpoints = tmp_path / "endpoints"
    endpoints.write_text("")
    with ExitStack() as es:
        gateway = es.enter_context(
            vgate_process(
                ["gateway"],
                tmp_path,
                env={
                    "VGATE_MODELS": MODEL,
                    "VGATE_ENDPOINTS_FILE": str(endpoints),
                    "VGATE_HEALTH_INTERVAL_S": "0.2",
                    **env,
                },
                ready_path="/ready",
                name="gateway",
            )
        )
        yield Elastic(gateway, endpoints, tmp_path, es)


async def _chats(url: str, n: int, **extra: object) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(
            *(client.post("/v1/chat/completions", json={**CHAT, **extra}) for _ in range(n))
        )


async def test_requests_for_a_model_at_zero_wait_and_are_answered_when_a_worker_starts(
    elastic: Elastic,
) -> None:
    chats = asyncio.create_task(_chats(elastic.gateway.url, 3))
    await eventually(lambda: elastic.load().get(MODEL, {}).get("queued") == 3)
    assert elastic.load()[MODEL]["ready_workers"] == 0
    await asyncio.to_thread(elastic.add_worker)  # the worker a scale-up would start
    answers = await chats
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(a.json()["choices"][0]["message"]["content"] for a in answers)
    queue = elastic.stats()["queues"][MODEL]
    assert (queue["depth"], queue["dispatched"], queue["refused"]) == (0, 3, 0)
    assert elastic.load()[MODEL] == {"inflight": 0, "queued": 0, "draining": 0, "ready_workers": 1}


async def test_a_client_that_leaves_while_queued_costs_nothing_upstream(elastic: Elastic) -> None:
    with pytest.raises(httpx.ReadTimeout):
        async with httpx.AsyncClient(base_url=elastic.gateway.url, timeout=0.5) as client:
            await client.post("/v1/chat/completions", json=CHAT)
    await eventually(lambda: elastic.load()[MODEL]["queued"] == 0)
    await asyncio.to_thread(elastic.add_worker)
    await eventually(lambda: elastic.load()[MODEL]["ready_workers"] == 1)
    assert [u["requests"] for u in elastic.stats()["upstreams"]] == [0]


@pytest.mark.parametrize("elastic", [{"VGATE_WORKER_CAPACITY": "2"}], indirect=True)
async def test_a_saturated_worker_gets_no_more_than_its_capacity_the_rest_wait_their_turn(
    elastic: Elastic,
) -> None:
    # The worker batches at most 2 sequences (the simulator's real capacity): so the operator sets the gateway's.
    await asyncio.to_thread(elastic.add_worker, "--max-num-seqs", "2")
    await eventually(lambda: elastic.load()[MODEL]["ready_workers"] == 1)
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(elastic.stats()["upstreams"][0]["inflight"])
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    answers = await _chats(elastic.gateway.url, 6, max_tokens=40)
    watcher.cancel()
    assert [a.status_code for a in answers] == [200] * 6
    assert max(seen) == 2
    assert elastic.stats()["queues"][MODEL]["dispatched"] >= 3


@pytest.mark.parametrize(
    "elastic", [{"VGATE_QUEUE_MAX_REQUESTS": "1", "VGATE_QUEUE_TIMEOUT_S": "1"}], indirect=True
)
async def test_a_full_queue_refuses_at_once_and_a_wait_ends_in_a_503(elastic: Elastic) -> None:
    waiting = asyncio.create_task(_chats(elastic.gateway.url, 1))
    await eventually(lambda: elastic.load()[MODEL]["queued"] == 1)
    (full,) = await _chats(elastic.gateway.url, 1)
    assert (full.status_code, full.json()["error"]["code"]) == (503, "queue_full")
    assert full.headers["retry-after"] == "1"
    (late,) = await waiting
    assert (late.status_code, late.json()["error"]["code"]) == (503, "queue_timeout")
    assert late.json()["error"]["type"] == "service_unavailable_error"
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{elastic.gateway.internal_url}/metrics")).text
    assert f'vgate_queue_refused_requests_total{{model="{MODEL}",reason="full"}} 1.0' in metrics
    assert f'vgate_queue_refused_requests_total{{model="{MODEL}",reason="timeout"}} 1.0' in metrics


async def test_a_model_nobody_serves_is_404_at_once(elastic: Elastic) -> None:
    (answer,) = await _chats(elastic.gateway.url, 1, model="not-served")
    assert (answer.status_code, answer.json()["error"]["code"]) == (404, "model_not_found")
