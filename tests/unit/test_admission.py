"""Admission control: a bounded number in flight, a short bounded queue, then an immediate 503."""

from __future__ import annotations

import asyncio

import pytest

from vgate_gateway.errors import OpenAIError
from vgate_gateway.front.admission import Admission

pytestmark = pytest.mark.timeout(10)


async def test_beyond_the_limit_and_the_queue_requests_are_refused_at_once() -> None:
    gate = Admission(limit=2, queue=1, queue_timeout_s=5, retry_after_s=3)
    await gate.acquire()
    await gate.acquire()
    queued = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert gate.queued == 1
    with pytest.raises(OpenAIError) as info:
        await gate.acquire()  # limit and queue full: no waiting at all
    assert (info.value.status, info.value.code) == (503, "gateway_overloaded")
    assert info.value.headers["Retry-After"] == "3"
    assert info.value.body()["error"]["type"] == "service_unavailable_error"
    gate.release()  # the slot goes straight to the queued request
    await queued
    assert (gate.inflight, gate.queued, gate.rejected_total) == (2, 0, 1)


async def test_a_queued_request_gives_up_after_the_queue_timeout_and_leaks_no_slot() -> None:
    gate = Admission(limit=1, queue=4, queue_timeout_s=0.01, retry_after_s=1)
    await gate.acquire()
    with pytest.raises(OpenAIError):
        await gate.acquire()
    gate.release()
    assert (gate.inflight, gate.queued) == (0, 0)
    await gate.acquire()
    assert gate.inflight == 1


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    gate = Admission(limit=1, queue=4, queue_timeout_s=5, retry_after_s=1)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.queued == 0
    gate.release()
    assert gate.inflight == 0
