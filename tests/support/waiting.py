"""Waiting in tests: :mod:`vgate.waiting`'s poll loop, failing the test (AssertionError), and idle workers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from tests.support.metrics import metric
from tests.support.procs import Proc
from vgate import waiting

T = TypeVar("T")


class FakeClock:
    """Time that moves only when the code under test sleeps (``clock=`` and ``sleep=`` of wait_for)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def wait_until(
    condition: Callable[[], T], within: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``condition`` until it holds and return its value; fail the test after ``within`` seconds."""
    return waiting.wait_for(condition, what, within=within, interval=interval, fail=AssertionError)


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    within: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """The async :func:`wait_until`; ``condition`` may be a plain or an async function."""
    return await waiting.eventually(condition, what, within=within, interval=interval, fail=AssertionError)


def wait_workers_idle(workers: Sequence[Proc], within: float = 5.0) -> None:
    """Wait until no worker is generating, by their own vLLM metrics."""
    wait_until(
        lambda: sum(metric(w.url, "vllm:num_requests_running") for w in workers) == 0,
        within=within,
        what="workers idle (they kept generating for a client that left)",
    )
