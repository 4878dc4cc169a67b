"""Fair, prioritised dispatch with real processes: a saturated dry-run worker, tenants by API key.

The worker batches at most 2 sequences (the simulator's real ``--max-num-seqs``) and the
gateway knows it (``VGATE_WORKER_CAPACITY``), so what does not fit waits in the gateway's
queue, where the policy decides who goes next.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL, WORKER_ARGS, Stack, start_stack
from tests.support.waiting import eventually

KEYS = {"flood": "sk-flood-1", "light": "sk-light-2", "app": "sk-app-3"}
KEYS_FILE = "sk-flood-1 id=flood\nsk-light-2 id=light\nsk-app-3 id=app max_priority=high\n"
HELLO = [{"role": "user", "content": "Tell me about the gateway"}]


@pytest.fixture
def saturated(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    keys = tmp_path / "keys"
    keys.write_text(KEYS_FILE)
    env = {"VGATE_API_KEYS_FILE": str(keys), "VGATE_WORKER_CAPACITY": "2", **getattr(request, "param", {})}
    with ExitStack() as es:
        yield start_stack(
            es, tmp_path, workers=1, gateway_env=env, worker_args=[*WORKER_ARGS, "--max-num-seqs", "2"]
        )


@pytest.fixture
async def tenants(saturated: Stack) -> AsyncIterator[dict[str, openai.AsyncOpenAI]]:
    """An ``openai`` client per key, as each tenant's application would hold one."""
    clients = {
        who: openai.AsyncOpenAI(base_url=f"{saturated.url}/v1", api_key=key, max_retries=0, timeout=60)
        for who, key in KEYS.items()
    }
    yield clients
    for client in clients.values():
        await client.close()


async def _chat(
    client: openai.AsyncOpenAI, done: list[str], name: str, max_tokens: int = 60, **headers: str
) -> str:
    answer = await client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=max_tokens,
        extra_body={"ignore_eos": True},  # every answer is max_tokens long: the worker stays busy
        extra_headers=headers or None,
    )
    done.append(name)
    return answer.choices[0].message.content or ""


def _queues(stack: Stack) -> dict[str, Any]:
    return httpx.get(f"{stack.gateway.internal_url}/stats").json()["queues"].get(MODEL, {})


async def _flood(
    stack: Stack, flood: openai.AsyncOpenAI, done: list[str], n: int = 10
) -> list[asyncio.Task[str]]:
    """``n`` requests of the flooding key at once: 2 run, the rest wait."""
    tasks = [asyncio.create_task(_chat(flood, done, f"flood{i}", max_tokens=60)) for i in range(n)]
    await eventually(lambda: _queues(stack).get("depth", 0) >= n - 2)
    return tasks


@pytest.mark.parametrize(
    ("saturated", "overtakes"),
    [({}, True), ({"VGATE_QUEUE_POLICY": "fifo"}, False)],
    indirect=["saturated"],
    ids=["fair", "fifo"],
)
async def test_a_light_tenant_overtakes_a_flooding_tenants_backlog(
    saturated: Stack, tenants: dict[str, openai.AsyncOpenAI], overtakes: bool
) -> None:
    done: list[str] = []
    flood = await _flood(saturated, tenants["flood"], done)
    await _chat(tenants["light"], done, "light")
    after = 10 - done.index("light")  # flood requests answered after light's
    await asyncio.gather(*flood)
    if overtakes:
        assert after >= 6  # ahead of it: at most the two running and the one dispatched as it arrived
        keys = _queues(saturated)["keys"]
        assert keys["flood"]["served_tokens"] > keys["light"]["served_tokens"] > 0
    else:
        assert after == 0  # the whole backlog first


async def test_a_request_may_lower_its_priority_but_not_raise_it_unless_its_key_allows(
    saturated: Stack, tenants: dict[str, openai.AsyncOpenAI]
) -> None:
    done: list[str] = []
    flood = await _flood(saturated, tenants["flood"], done, n=6)
    light = tenants["light"]
    low = asyncio.create_task(_chat(light, done, "light-low", **{"x-vgate-priority": "low"}))
    await eventually(lambda: _queues(saturated)["classes"]["low"]["depth"] == 1)
    await _chat(light, done, "light-normal")
    await asyncio.gather(low, *flood)
    assert done[-1] == "light-low"  # lowered below the flood: served after all of it
    assert done.index("light-normal") < done.index("light-low")  # sent later, served first

    with pytest.raises(openai.PermissionDeniedError) as refused:
        await _chat(light, done, "raise", **{"x-vgate-priority": "high"})
    assert refused.value.code == "priority_not_allowed"
    assert await _chat(tenants["app"], done, "app-high", **{"x-vgate-priority": "high"})


async def test_a_deadline_that_cannot_be_met_is_refused_at_once(
    saturated: Stack, tenants: dict[str, openai.AsyncOpenAI]
) -> None:
    done: list[str] = []
    flood = await _flood(saturated, tenants["flood"], done, n=16)
    await eventually(lambda: _queues(saturated).get("dispatch_rate_per_s") is not None, within=20)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as refused:  # 503
        await _chat(tenants["flood"], done, "late", **{"x-vgate-deadline-ms": "100"})
    assert time.monotonic() - started < 0.5
    assert refused.value.status_code == 503
    assert refused.value.code == "deadline_unmeetable"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    # Another key is one turn from the front: the same deadline, generous enough for one turn, is met.
    assert await _chat(tenants["light"], done, "light", **{"x-vgate-deadline-ms": "5000"})
    await asyncio.gather(*flood)
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{saturated.gateway.internal_url}/metrics")).text
    assert f'vgate_queue_refused_requests_total{{model="{MODEL}",reason="deadline"}} 1.0' in metrics
    assert f'vgate_queue_fair_tokens_total{{key_id="light",model="{MODEL}"}}' in metrics


@pytest.mark.parametrize(("reserve", "kept"), [("1", True), ("0", False)], ids=["reserve", "no-reserve"])
async def test_with_a_reserve_a_light_tenant_is_not_queued_behind_a_flood(
    tmp_path: Path, reserve: str, kept: bool
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(KEYS_FILE)
    env = {"VGATE_API_KEYS_FILE": str(keys), "VGATE_WORKER_CAPACITY": "4", "VGATE_QUEUE_RESERVE": reserve}
    with ExitStack() as es:
        stack = start_stack(
            es, tmp_path, workers=1, gateway_env=env, worker_args=[*WORKER_ARGS, "--max-num-seqs", "4"]
        )
        light = openai.AsyncOpenAI(
            base_url=f"{stack.url}/v1", api_key=KEYS["light"], max_retries=0, timeout=60
        )
        flood = openai.AsyncOpenAI(
            base_url=f"{stack.url}/v1", api_key=KEYS["flood"], max_retries=0, timeout=60
        )
        done: list[str] = []
        await _chat(
            light, done, "warm-up", max_tokens=1
        )  # the light key is active: the flood's share is 2 of 4
        tasks = [asyncio.create_task(_chat(flood, done, f"flood{i}")) for i in range(8)]
        # With the reserve, 3 run (its share and one more) and 5 wait; without it, 4 run.
        await eventually(lambda: _queues(stack).get("depth", 0) == (5 if kept else 4))
        await _chat(light, done, "light")
        await asyncio.gather(*tasks)
        await light.close()
        await flood.close()
        before = done.index("light") - 1  # flood requests answered before light's
        if kept:
            assert before <= 3  # beside the three running, not after them: it took the kept slot at once
            assert _queues(stack)["reserve_per_worker"] == 1
        else:
            assert before >= 4  # the four running first: it waited for one of them to end
