"""The engine priority a request carries to workers running vLLM's priority scheduling.

Lower is served first: the class (high 0, normal 2, low 4), one worse while the key has a backlog
(over its share). Spliced into the forwarded bytes only; the client's bytes, and every key the
cache, dedup and batching compute from them, stay as they were.
"""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from prometheus_client import CollectorRegistry

from tests.unit.test_fairness import H, L, N, _req
from vgate_gateway.efficiency.cache.policy import request_key
from vgate_gateway.front.body import parse_request
from vgate_gateway.protocol import Kind, with_engine_priority
from vgate_gateway.settings import GatewaySettings, ModelSettings
from vgate_gateway.upstream.dispatch import Dispatcher, QueueMetrics
from vgate_gateway.upstream.pool import DiscoveredEndpoint, UpstreamPool
from vgate_gateway.upstream.queue import engine_priority
from vgate_gateway.upstream.routing import Router


def test_classes_come_first_then_the_standing() -> None:
    values = [engine_priority(p, over) for p in (H, N, L) for over in (False, True)]
    assert values == sorted(values) == [0, 1, 2, 3, 4, 5]


def _dispatcher(policy: str = "fair", engine: bool = True) -> Dispatcher:
    config = GatewaySettings(
        models=["m"],
        worker_capacity=1,
        queue_policy=policy,  # type: ignore[arg-type]
        model_settings={"m": ModelSettings(engine_priority=engine)},
    )
    pool = UpstreamPool(eject_after=3, panic_threshold=0.5)
    router = Router(
        pool, "round-robin", declared_models=config.declared_models(), session_header="x", retry_after_s=1
    )
    dispatch = Dispatcher(config, pool, router, QueueMetrics(CollectorRegistry()))
    pool.replace([DiscoveredEndpoint("http://a")])
    pool.passed(pool.all()[0], frozenset({"m"}))
    return dispatch


async def test_a_flooding_key_is_one_worse_than_a_light_key_of_its_class() -> None:
    dispatch = _dispatcher()
    free = _req("flood", N)
    busy = await dispatch.acquire(free)
    assert free.engine_priority == 2  # nothing waiting: the class alone
    flood = [_req("flood", N) for _ in range(3)]
    light, ops = _req("light", N), _req("ops", H)
    tasks = [asyncio.create_task(dispatch.acquire(r)) for r in [*flood, light, ops]]
    await asyncio.sleep(0)
    for _ in range(len(tasks)):
        dispatch.release(free, busy)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert ops.engine_priority == 0
    assert light.engine_priority == 2
    # Each of the flood's requests left a backlog behind it but the last.
    assert [r.engine_priority for r in flood] == [3, 3, 2]


async def test_nothing_is_set_unless_the_models_workers_run_priority_scheduling() -> None:
    dispatch = _dispatcher(engine=False)
    req = _req("a", H)
    await dispatch.acquire(req)
    assert req.engine_priority is None


async def test_fifo_ignores_classes_here_too() -> None:
    dispatch = _dispatcher("fifo")
    first, high = _req("a", L), _req("b", H)
    busy = await dispatch.acquire(first)
    task = asyncio.create_task(dispatch.acquire(high))
    await asyncio.sleep(0)
    dispatch.release(first, busy)
    await task
    assert (first.engine_priority, high.engine_priority) == (2, 2)


def _body(**fields: object) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def test_the_priority_is_appended_and_the_clients_bytes_are_kept() -> None:
    body = _body() + b"\n"
    sent = with_engine_priority(body, json.loads(body), 3)
    assert sent.startswith(body.rstrip()[:-1])
    assert orjson.loads(sent) == {**json.loads(body), "priority": 3}


@pytest.mark.parametrize(
    ("asked", "allowed", "seen"),
    [
        (9, 2, 9),  # a batch job stepping back keeps its own value
        (2, 2, 2),
        (-100, 2, 2),  # more urgent than its key allows: the key's value wins
        (0, 3, 3),
        ("urgent", 2, "urgent"),  # not an integer: left for the worker to refuse
        (True, 2, True),
    ],
)
def test_a_clients_own_priority_stands_only_as_far_as_its_key_allows(
    asked: object, allowed: int, seen: object
) -> None:
    body = _body(priority=asked)
    assert orjson.loads(with_engine_priority(body, json.loads(body), allowed))["priority"] == seen


async def test_dispatch_leaves_the_body_and_the_cache_and_dedup_key_alone() -> None:
    dispatch = _dispatcher()
    req, twin = (parse_request(Kind.CHAT, _body(), key_id="a") for _ in range(2))
    await dispatch.acquire(req)
    assert req.engine_priority == 2
    assert (req.body, req.payload) == (twin.body, twin.payload)
    assert request_key(req.kind, req.model, req.payload, req.tenant) == request_key(
        twin.kind, twin.model, twin.payload, twin.tenant
    )
