"""The model queue: dispatch at once while a worker can take a request, FIFO while none can, bounded."""

from __future__ import annotations

import asyncio
import json
import tracemalloc

import pytest
from prometheus_client import CollectorRegistry

from vgate_gateway.errors import OpenAIError
from vgate_gateway.front.body import parse_request
from vgate_gateway.protocol import Kind, Request
from vgate_gateway.settings import GatewaySettings, ModelSettings
from vgate_gateway.upstream.dispatch import Dispatcher, QueueMetrics
from vgate_gateway.upstream.pool import DiscoveredEndpoint, UpstreamPool
from vgate_gateway.upstream.queue import Bounds, Fifo, ModelQueue, QueueFull, Waiting
from vgate_gateway.upstream.routing import Router


def _req(model: str = "m", prompt: str = "x") -> Request:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    return parse_request(Kind.CHAT, json.dumps(body).encode())


def _fleet(**settings: object) -> tuple[Dispatcher, UpstreamPool]:
    config = GatewaySettings(models=["m"], routing="round-robin", **settings)  # type: ignore[arg-type]
    pool = UpstreamPool(eject_after=3, panic_threshold=0.5)
    router = Router(
        pool, "round-robin", declared_models=config.declared_models(), session_header="x", retry_after_s=1
    )
    return Dispatcher(config, pool, router, QueueMetrics(CollectorRegistry())), pool


def _up(pool: UpstreamPool, *urls: str) -> None:
    """Workers serving ``m`` join and pass their first health check."""
    pool.replace([*(DiscoveredEndpoint(u.url) for u in pool.all()), *(DiscoveredEndpoint(u) for u in urls)])
    for u in pool.all():
        if not u.healthy:
            pool.passed(u, frozenset({"m"}))


async def test_a_free_worker_takes_the_request_at_once_and_nothing_is_queued() -> None:
    dispatch, pool = _fleet(worker_capacity=2)
    _up(pool, "http://a")
    ups = [await dispatch.acquire(_req()) for _ in range(2)]
    assert [u.url for u in ups] == ["http://a", "http://a"]
    assert dispatch.load()["m"] == {"inflight": 2, "queued": 0, "draining": 0, "ready_workers": 1}
    assert dispatch.stats() == {}  # no queue was ever needed


async def test_a_declared_model_with_no_worker_waits_and_is_dispatched_fifo_when_one_appears() -> None:
    dispatch, pool = _fleet(worker_capacity=1)
    first = asyncio.create_task(dispatch.acquire(_req(prompt="first")))
    await asyncio.sleep(0)
    second = asyncio.create_task(dispatch.acquire(_req(prompt="second")))
    await asyncio.sleep(0)
    assert dispatch.load()["m"]["queued"] == 2
    _up(pool, "http://a")  # scaled from zero: one worker, room for one request
    up = await first
    assert up.url == "http://a"
    assert not second.done()
    dispatch.release(_req(), up)  # the first answer ends: the second takes its place
    assert (await second).url == "http://a"
    assert dispatch.stats()["m"]["dispatched"] == 2


async def test_a_saturated_fleet_queues_and_a_newcomer_never_jumps_the_queue() -> None:
    dispatch, pool = _fleet(worker_capacity=1)
    _up(pool, "http://a")
    busy = await dispatch.acquire(_req())
    waiting = asyncio.create_task(dispatch.acquire(_req(prompt="waiting")))
    await asyncio.sleep(0)
    _up(pool, "http://b")  # a second worker: the one already waiting gets it
    assert (await waiting).url == "http://b"
    dispatch.release(_req(), busy)
    assert (await dispatch.acquire(_req())).url == "http://a"


async def test_a_client_that_leaves_while_queued_is_removed_at_once() -> None:
    dispatch, pool = _fleet()
    waiting = asyncio.create_task(dispatch.acquire(_req()))
    await asyncio.sleep(0)
    assert dispatch.load()["m"]["queued"] == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert dispatch.load()["m"] == {"inflight": 0, "queued": 0, "draining": 0, "ready_workers": 0}
    _up(pool, "http://a")
    assert pool.get("http://a").requests_total == 0  # type: ignore[union-attr]


async def test_bounds_refuse_at_once_and_a_wait_ends_in_a_503_with_retry_after() -> None:
    dispatch, _ = _fleet(queue_max_requests=1, queue_timeout_s=0.05)
    waiting = asyncio.create_task(dispatch.acquire(_req()))
    await asyncio.sleep(0)
    with pytest.raises(OpenAIError) as full:
        await dispatch.acquire(_req())
    assert (full.value.status, full.value.code, full.value.headers["Retry-After"]) == (503, "queue_full", "1")
    with pytest.raises(OpenAIError) as late:
        await waiting
    assert (late.value.status, late.value.code) == (503, "queue_timeout")
    stats = dispatch.stats()["m"]
    assert (stats["depth"], stats["refused"], stats["timed_out"]) == (0, 1, 1)


async def test_the_queue_is_bounded_in_bytes_and_per_model_settings_apply() -> None:
    dispatch, _ = _fleet(model_settings={"m": ModelSettings(queue_max_bytes=100, queue_timeout_s=5)})
    small = asyncio.create_task(dispatch.acquire(_req()))
    await asyncio.sleep(0)
    with pytest.raises(OpenAIError) as big:
        await dispatch.acquire(_req(prompt="x" * 200))
    assert big.value.code == "queue_full"
    small.cancel()


async def test_an_undeclared_model_is_404_not_queued() -> None:
    dispatch, pool = _fleet()
    _up(pool, "http://a")
    with pytest.raises(OpenAIError) as info:
        await dispatch.acquire(_req("other"))
    assert info.value.status == 404


async def test_requests_for_any_number_of_unknown_models_leave_nothing_behind() -> None:
    """Clients choose model names: a flood of made-up ones is refused and costs no memory."""
    dispatch, pool = _fleet()
    _up(pool, "http://a")
    requests = [_req(f"made-up-{i}") for i in range(3000)]
    where = [tracemalloc.Filter(True, "*vgate_gateway*")]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(where)
        for req in requests:
            with pytest.raises(OpenAIError) as info:
                await dispatch.acquire(req)
            assert info.value.status == 404
        after = tracemalloc.take_snapshot().filter_traces(where)
    finally:
        tracemalloc.stop()
    kept = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert kept < 20_000, f"{kept} bytes kept by the gateway for 3,000 unknown model names"


def test_the_queue_holds_its_bounds_and_serves_the_longest_waiting_first() -> None:
    queue = ModelQueue("m", Bounds(max_requests=2, max_bytes=10_000, timeout_s=1))
    loop = asyncio.new_event_loop()
    try:
        items = [Waiting(_req(prompt=str(i)), float(i), loop.create_future()) for i in range(3)]
        queue.add(items[0])
        queue.add(items[1])
        with pytest.raises(QueueFull):
            queue.victims(items[2])
        assert Fifo().pick(queue) is items[0]
        assert queue.remove(items[0])
        assert queue.remove(items[1])
        assert not queue.remove(items[1])
        assert (len(queue), queue.bytes, queue.rejected) == (0, 0, 1)
    finally:
        loop.close()


async def test_requests_on_a_worker_that_left_count_as_draining_not_as_load() -> None:
    dispatch, pool = _fleet(worker_capacity=2)
    _up(pool, "http://a", "http://b")
    ups = [await dispatch.acquire(_req()) for _ in range(4)]
    assert dispatch.load()["m"]["inflight"] == 4
    pool.replace([DiscoveredEndpoint("http://a")])  # b scaled down: its two requests finish there
    assert dispatch.load()["m"] == {"inflight": 2, "queued": 0, "draining": 2, "ready_workers": 1}
    for up in ups:
        dispatch.release(_req(), up)
    assert dispatch.load()["m"] == {"inflight": 0, "queued": 0, "draining": 0, "ready_workers": 1}


async def test_a_terminating_worker_drains() -> None:
    dispatch, pool = _fleet(worker_capacity=1)
    _up(pool, "http://a")
    up = await dispatch.acquire(_req())
    pool.replace([DiscoveredEndpoint("http://a", terminating=True)])
    assert dispatch.load()["m"]["draining"] == 1
    assert dispatch.load()["m"]["inflight"] == 0
    dispatch.release(_req(), up)


async def test_a_retry_with_no_other_worker_is_held_until_one_is_routable() -> None:
    # A one-worker model being replaced: the old worker refused the connection before the
    # gateway saw it leave. The retry waits for the new worker instead of failing at once.
    dispatch, pool = _fleet(worker_capacity=4)
    _up(pool, "http://old")
    old = pool.all()[0]
    pool.failed(old, traffic=True)
    retry = asyncio.create_task(dispatch.acquire(_req(), exclude=["http://old"]))
    await asyncio.sleep(0.25)
    assert not retry.done()
    _up(pool, "http://new")
    assert (await asyncio.wait_for(retry, 2)).url == "http://new"


async def test_a_held_retry_goes_back_to_its_worker_once_a_health_check_clears_it() -> None:
    dispatch, pool = _fleet(worker_capacity=4)
    _up(pool, "http://a")
    worker = pool.all()[0]
    pool.failed(worker, traffic=True)
    retry = asyncio.create_task(dispatch.acquire(_req(), exclude=["http://a"]))
    await asyncio.sleep(0.25)
    assert not retry.done()
    pool.passed(worker, frozenset({"m"}))
    assert (await asyncio.wait_for(retry, 2)).url == "http://a"


async def test_a_held_retry_ends_in_a_503_after_the_queue_timeout() -> None:
    dispatch, pool = _fleet(worker_capacity=4, queue_timeout_s=0.3)
    _up(pool, "http://a")
    pool.failed(pool.all()[0], traffic=True)
    with pytest.raises(OpenAIError) as info:
        await asyncio.wait_for(dispatch.acquire(_req(), exclude=["http://a"]), 2)
    assert (info.value.status, info.value.code) == (503, "no_healthy_upstream")
