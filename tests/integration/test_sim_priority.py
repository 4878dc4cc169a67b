"""The dry-run worker's scheduling policy seen from outside, with the official ``openai`` client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support.procs import Proc, vgate_process
from vgate_worker.settings import DEFAULT_MODEL

pytestmark = pytest.mark.timeout(60)

MODEL = DEFAULT_MODEL


def _worker(tmp: pytest.TempPathFactory, name: str, *flags: str) -> Iterator[Proc]:
    args = ["worker", "--dry-run", "--max-num-seqs", "1", *flags]
    with vgate_process(args, Path(tmp.mktemp(name))) as proc:
        yield proc


@pytest.fixture(scope="module")
def priority(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    yield from _worker(tmp_path_factory, "priority", "--scheduling-policy", "priority")


@pytest.fixture(scope="module")
def fcfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    yield from _worker(tmp_path_factory, "fcfs")


async def _finish_order(url: str, priorities: list[int]) -> list[int]:
    """Hold the only slot with one long request, queue one request per priority, in that order."""
    done: list[int] = []

    async def one(client: openai.AsyncOpenAI, value: int, tokens: int) -> None:
        await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"priority {value}"}],
            max_tokens=tokens,
            extra_body={"ignore_eos": True, "priority": value},
        )
        done.append(value)

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        holder = asyncio.ensure_future(one(client, 1000, 400))
        await asyncio.sleep(0.1)  # the holder is running: the others queue in the engine
        queued = []
        for value in priorities:
            queued.append(asyncio.ensure_future(one(client, value, 4)))
            await asyncio.sleep(0.02)  # arrival order is the list's order
        await asyncio.gather(holder, *queued)
    return done[1:]


async def test_the_priority_policy_serves_lower_values_first(priority: Proc) -> None:
    assert await _finish_order(priority.url, [7, 3, -2, 5]) == [-2, 3, 5, 7]


async def test_fcfs_accepts_a_priority_and_ignores_it(fcfs: Proc) -> None:
    # vLLM V1 does not refuse a priority on an fcfs engine: it serves in arrival order.
    assert await _finish_order(fcfs.url, [7, 3, -2, 5]) == [7, 3, -2, 5]


@pytest.mark.parametrize("value", ["urgent", 2**63, 1.5])
def test_a_priority_that_is_not_a_64_bit_integer_is_a_400(priority: Proc, value: object) -> None:
    with (
        openai.OpenAI(base_url=priority.url + "/v1", api_key="unused", max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"priority": value}
        )
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body.get("type") == "BadRequestError"


def test_an_unknown_policy_stops_the_worker_at_start(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="scheduling-policy"),
        vgate_process(["worker", "--dry-run", "--scheduling-policy", "lifo"], tmp_path),
    ):
        pass
