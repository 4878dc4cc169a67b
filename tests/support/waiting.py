"""Waiting for state that nothing signals: a sync poll, an async poll, and idle workers."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence

from tests.support.metrics import metric
from tests.support.procs import Proc


def wait_until(
    condition: Callable[[], bool], within: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        time.sleep(interval)


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], within: float = 10.0, interval: float = 0.02
) -> None:
    """The async :func:`wait_until`; ``condition`` may be a plain or an async function."""
    async with asyncio.timeout(within):
        while True:
            held = condition()
            if inspect.isawaitable(held):
                held = await held
            if held:
                return
            await asyncio.sleep(interval)


def wait_workers_idle(workers: Sequence[Proc], within: float = 5.0) -> None:
    """Wait until no worker is generating, by their own vLLM metrics."""
    wait_until(
        lambda: sum(metric(w.url, "vllm:num_requests_running") for w in workers) == 0,
        within=within,
        what="workers idle (they kept generating for a client that left)",
    )
