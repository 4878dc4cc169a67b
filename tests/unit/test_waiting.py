"""The one poll loop (vgate.waiting) every tier waits with: what it returns, retries and reports."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.waiting import FakeClock
from vgate.waiting import eventually, wait_for


def test_the_first_truthy_answer_is_returned() -> None:
    clock, answers = FakeClock(), iter([None, [], 0, {"ok": 1}])
    found = wait_for(lambda: next(answers), "x", within=10, interval=2, clock=clock, sleep=clock.sleep)
    assert found == {"ok": 1}
    assert clock.sleeps == [2, 2, 2]


def test_a_timeout_names_what_and_the_last_answer_or_error() -> None:
    clock = FakeClock()
    with pytest.raises(AssertionError, match=r"timed out after 3s waiting for the pods \(last: 0\)"):
        wait_for(
            lambda: 0, "the pods", within=3, interval=1, fail=AssertionError, clock=clock, sleep=clock.sleep
        )

    def missing() -> None:
        raise KeyError("status")

    with pytest.raises(TimeoutError, match=r"waiting for status \(last: KeyError\('status'\)\)"):
        wait_for(missing, "status", within=2, retry=(KeyError,), clock=clock, sleep=clock.sleep)


def test_an_error_not_listed_as_retryable_goes_through_at_once() -> None:
    clock = FakeClock()
    with pytest.raises(ZeroDivisionError):
        wait_for(lambda: 1 / 0, "x", within=5, retry=(KeyError,), clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


async def test_eventually_takes_plain_and_async_probes_and_returns_the_answer() -> None:
    answers = iter([False, False, "ready"])
    assert await eventually(lambda: next(answers), "x", within=1, interval=0) == "ready"

    async def ready() -> int:
        return 7

    assert await eventually(ready, "x", within=1) == 7


async def test_eventually_cancels_a_probe_that_hangs_at_the_deadline() -> None:
    async def hangs() -> bool:
        await asyncio.sleep(60)
        return True

    with pytest.raises(AssertionError, match="waiting for the answer"):
        await eventually(hangs, "the answer", within=0.05, fail=AssertionError)
