"""The queue's order as data: queue states in, dispatch order out; deadlines, shedding, the keys file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from vgate_gateway.errors import OpenAIError
from vgate_gateway.front.auth import ApiKey, KeyFileError, parse_keys
from vgate_gateway.front.body import parse_request
from vgate_gateway.front.schedule import schedule_of
from vgate_gateway.protocol import Kind, Priority, Request, Schedule, Usage
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.upstream.dispatch import Dispatcher, QueueMetrics
from vgate_gateway.upstream.pool import DiscoveredEndpoint, UpstreamPool
from vgate_gateway.upstream.queue import (
    ACTIVE_S,
    Bounds,
    FairShare,
    Fifo,
    ModelQueue,
    Policy,
    QueueFull,
    RateMeter,
    Shares,
    Waiting,
    wait_estimate,
)
from vgate_gateway.upstream.routing import Router

H, N, L = Priority.HIGH, Priority.NORMAL, Priority.LOW


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _req(
    key: str = "a", priority: Priority = N, weight: float = 1.0, prompt_chars: int = 40, stream: bool = False
) -> Request:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * prompt_chars}], "stream": stream}
    req = parse_request(Kind.CHAT, json.dumps(body).encode(), key_id=key)
    req.schedule = Schedule(priority, weight)
    return req


def _queue(max_requests: int = 100, max_bytes: int = 1 << 20) -> ModelQueue:
    return ModelQueue("m", Bounds(max_requests, max_bytes, 60))


def _enqueue(queue: ModelQueue, policy: Policy, loop: asyncio.AbstractEventLoop, req: Request) -> Waiting:
    waiting = Waiting(req, 0.0, loop.create_future())
    policy.arrived(queue, waiting)
    queue.add(waiting)
    return waiting


def _order(queue: ModelQueue, policy: Policy) -> list[str]:
    """Dispatch everything; each request named key:arrival-number."""
    out = []
    while (head := policy.pick(queue)) is not None:
        queue.remove(head)
        policy.dispatched(head)
        out.append(f"{head.key}{head.seq}")
    return out


# Queue states (key, class) in arrival order -> the order a fair queue dispatches them in.
FAIR_TABLE = [
    ("one key: arrival order", [("a", N)] * 3, ["a1", "a2", "a3"]),
    ("a backlog does not hold back a newcomer", [("a", N)] * 4 + [("b", N)], ["a1", "b5", "a2", "a3", "a4"]),
    ("two keys take turns", [("a", N), ("a", N), ("b", N), ("b", N)], ["a1", "b3", "a2", "b4"]),
    ("classes first", [("a", L), ("b", N), ("c", H)], ["c3", "b2", "a1"]),
    ("a class is fair inside", [("a", L), ("a", L), ("b", L), ("c", H)], ["c4", "a1", "b3", "a2"]),
]


@pytest.mark.parametrize(("arrivals", "order"), [t[1:] for t in FAIR_TABLE], ids=[t[0] for t in FAIR_TABLE])
def test_fair_dispatch_order(
    loop: asyncio.AbstractEventLoop, arrivals: list[tuple[str, Priority]], order: list[str]
) -> None:
    queue, policy = _queue(), FairShare()
    for key, priority in arrivals:
        _enqueue(queue, policy, loop, _req(key, priority))
    assert _order(queue, policy) == order


def test_fifo_ignores_classes_and_keys(loop: asyncio.AbstractEventLoop) -> None:
    queue, policy = _queue(), Fifo()
    for key, priority in [("a", L), ("a", N), ("b", H), ("a", N)]:
        _enqueue(queue, policy, loop, _req(key, priority))
    assert _order(queue, policy) == ["a1", "a2", "b3", "a4"]


def test_the_key_served_fewer_tokens_goes_first_and_weights_scale_the_share(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Equal requests, a weight of 2 against 1: two of b's for each of a's."""
    queue, policy = _queue(), FairShare()
    for _ in range(6):
        _enqueue(queue, policy, loop, _req("a"))
        _enqueue(queue, policy, loop, _req("b", weight=2.0))
    keys = [name[0] for name in _order(queue, policy)]
    assert keys[:9] == ["a", "b", "b", "a", "b", "b", "a", "b", "b"]


def test_real_usage_corrects_the_estimate(loop: asyncio.AbstractEventLoop) -> None:
    """a's first answer was long: b, which sent the same, goes twice before a again."""
    queue, policy = _queue(), FairShare()
    first = _enqueue(queue, policy, loop, _req("a"))
    assert _order(queue, policy) == ["a1"]
    estimate = first.req.fair_charge
    assert estimate == len(first.req.body) // 4
    _enqueue(queue, policy, loop, _req("b"))  # b waits: lifted to a's counter (the last served)
    policy.settle(first.req, Usage(prompt_tokens=10, completion_tokens=100))
    assert policy.counters()["a"] == 10 + 2 * 100
    for _ in range(2):
        _enqueue(queue, policy, loop, _req("a"))
        _enqueue(queue, policy, loop, _req("b"))
    assert [n[0] for n in _order(queue, policy)] == ["b", "b", "b", "a", "a"]


def test_an_idle_key_banks_no_credit(loop: asyncio.AbstractEventLoop) -> None:
    """b was away while a was served 1,000 tokens: it comes back at a's level, not 1,000 behind."""
    queue, policy = _queue(), FairShare()
    for _ in range(3):
        _enqueue(queue, policy, loop, _req("a"))
    head = policy.pick(queue)
    assert head is not None
    queue.remove(head)
    policy.dispatched(head)
    policy.settle(head.req, Usage(prompt_tokens=1000, completion_tokens=0))
    _enqueue(queue, policy, loop, _req("b"))
    counters = policy.counters()
    assert counters["b"] == counters["a"]
    assert [n[0] for n in _order(queue, policy)] in (["a", "b", "a"], ["b", "a", "a"])


def test_shedding_takes_the_newest_of_the_least_urgent_class(loop: asyncio.AbstractEventLoop) -> None:
    queue, policy = _queue(max_requests=3), FairShare()
    low1 = _enqueue(queue, policy, loop, _req("a", L))
    low2 = _enqueue(queue, policy, loop, _req("b", L))
    _enqueue(queue, policy, loop, _req("c", N))
    arrival = Waiting(_req("d", H), 0.0, loop.create_future())
    assert queue.victims(arrival) == [low2]
    assert queue.victims(Waiting(_req("d", N), 0.0, loop.create_future())) == [low2]
    with pytest.raises(QueueFull):
        queue.victims(Waiting(_req("d", L), 0.0, loop.create_future()))
    assert low1 in list(queue)


def test_a_full_queue_makes_room_for_a_key_that_holds_little_by_shedding_the_longest_lane(
    loop: asyncio.AbstractEventLoop,
) -> None:
    queue, policy = _queue(max_requests=4), FairShare()
    flood = [_enqueue(queue, policy, loop, _req("a")) for _ in range(3)]
    _enqueue(queue, policy, loop, _req("b"))
    assert queue.victims(Waiting(_req("c"), 0.0, loop.create_future())) == [flood[-1]]
    with pytest.raises(QueueFull):  # the flooding key itself: nobody holds more than it
        queue.victims(Waiting(_req("a"), 0.0, loop.create_future()))
    # b holding 2 and a 2 is still fair; b holding 3 and a 1 would not be
    assert queue.victims(Waiting(_req("b"), 0.0, loop.create_future())) == [flood[-1]]
    _enqueue(queue, policy, loop, _req("b"))  # (the bound is the dispatcher's business)
    with pytest.raises(QueueFull):
        queue.victims(Waiting(_req("b"), 0.0, loop.create_future()))
    heavy = _queue(max_requests=4)  # a weight of 3: its 3 places are one for each unit of weight
    for _ in range(3):
        _enqueue(heavy, policy, loop, _req("a", weight=3.0))
    _enqueue(heavy, policy, loop, _req("b"))
    with pytest.raises(QueueFull):
        heavy.victims(Waiting(_req("c"), 0.0, loop.create_future()))


def test_a_more_urgent_arrival_sheds_from_the_longest_lane_of_the_class_below(
    loop: asyncio.AbstractEventLoop,
) -> None:
    queue, policy = _queue(max_requests=4), FairShare()
    flood = [_enqueue(queue, policy, loop, _req("a")) for _ in range(3)]
    _enqueue(queue, policy, loop, _req("b"))  # the newest, but b holds one place to a's three
    assert queue.victims(Waiting(_req("c", H), 0.0, loop.create_future())) == [flood[-1]]


def test_shedding_for_bytes_takes_as_many_as_it_needs(loop: asyncio.AbstractEventLoop) -> None:
    queue, policy = _queue(max_bytes=300), FairShare()
    smalls = [_enqueue(queue, policy, loop, _req("a", L, prompt_chars=20)) for _ in range(3)]
    big = Waiting(_req("b", H, prompt_chars=150), 0.0, loop.create_future())
    victims = queue.victims(big)
    assert len(victims) >= 2
    assert victims == smalls[::-1][: len(victims)]
    assert queue.bytes - sum(v.size for v in victims) + big.size <= 300


# (queue: key, class, weight; the newcomer) -> requests dispatched before it, fair and fifo
AHEAD_TABLE = [
    ("empty", [], ("b", N, 1.0), 0, 0),
    ("behind another key's backlog: one turn", [("a", N, 1.0)] * 10, ("b", N, 1.0), 1, 10),
    ("its own backlog counts", [("b", N, 1.0)] * 3 + [("a", N, 1.0)] * 10, ("b", N, 1.0), 7, 13),
    ("a heavier key gets more turns", [("a", N, 3.0)] * 10, ("b", N, 1.0), 3, 10),
    ("a more urgent class all goes first", [("a", H, 1.0)] * 4 + [("c", L, 1.0)] * 5, ("b", N, 1.0), 4, 9),
]


@pytest.mark.parametrize(
    ("queued", "newcomer", "fair", "fifo"), [t[1:] for t in AHEAD_TABLE], ids=[t[0] for t in AHEAD_TABLE]
)
def test_requests_ahead_of_a_newcomer(
    loop: asyncio.AbstractEventLoop,
    queued: list[tuple[str, Priority, float]],
    newcomer: tuple[str, Priority, float],
    fair: int,
    fifo: int,
) -> None:
    for policy, expected in ((FairShare(), fair), (Fifo(), fifo)):
        queue = _queue()
        for key, priority, weight in queued:
            _enqueue(queue, policy, loop, _req(key, priority, weight))
        arrival = Waiting(_req(*newcomer), 0.0, loop.create_future())
        assert policy.ahead(queue, arrival) == expected, policy.name


def test_the_rate_meter_and_the_wait_estimate() -> None:
    meter = RateMeter(window=8, horizon_s=10, minimum=4)
    assert meter.rate(0.0) is None
    for t in (0.0, 0.5, 1.0, 1.5):
        meter.tick(t)
    assert meter.rate(2.0) == pytest.approx(2.0)  # 4 dispatches in the 2 s since the first
    assert meter.rate(20.0) is None  # all of them too old to say anything
    queue, policy = _queue(), Fifo()
    loop = asyncio.new_event_loop()
    try:
        for _ in range(3):
            _enqueue(queue, policy, loop, _req("a"))
        arrival = Waiting(_req("b"), 0.0, loop.create_future())
        assert wait_estimate(policy, queue, arrival, 2.0) == pytest.approx(2.0)  # 4th to go, 2 a second
        assert wait_estimate(policy, queue, arrival, None) is None
    finally:
        loop.close()


# -- the keys file and the headers ---------------------------------------------------------


def test_keys_carry_priority_weight_and_deadline() -> None:
    (ops, app, plain) = parse_keys(
        "k-ops id=ops priority=high weight=2.5 deadline_ms=800\nk-app id=app max_priority=high\nk-x id=x\n"
    )
    assert (ops.priority, ops.weight, ops.deadline_ms, ops.ceiling) == (H, 2.5, 800, H)
    assert (app.priority, app.ceiling) == (N, H)
    assert (plain.priority, plain.weight, plain.deadline_ms, plain.ceiling) == (N, 1.0, None, N)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("k priority=urgent", "priority must be one of high, normal, low"),
        ("k max_priority=1", "max_priority must be one of"),
        ("k weight=0", "weight must be a number"),
        ("k weight=abc", "weight must be a number"),
        ("k deadline_ms=-5", "deadline_ms must be a positive integer"),
    ],
)
def test_bad_scheduling_options_name_the_line(line: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=message):
        parse_keys(line)


def _headers(**values: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in values.items()]


def test_a_request_may_lower_its_class_and_raise_it_only_as_far_as_its_key_allows() -> None:
    normal, capped = ApiKey("n", b""), ApiKey("c", b"", max_priority=H)
    assert schedule_of(normal, _headers(x_vgate_priority="low"), 0).priority is L
    assert schedule_of(capped, _headers(x_vgate_priority="high"), 0).priority is H
    with pytest.raises(OpenAIError) as refused:
        schedule_of(normal, _headers(x_vgate_priority="high"), 0)
    assert (refused.value.status, refused.value.code) == (403, "priority_not_allowed")
    with pytest.raises(OpenAIError) as bad:
        schedule_of(normal, _headers(x_vgate_priority="urgent"), 0)
    assert bad.value.status == 400


def test_deadlines_come_from_the_header_or_the_key() -> None:
    keyed = ApiKey("k", b"", deadline_ms=2000)
    assert schedule_of(keyed, [], 10.0).deadline == pytest.approx(12.0)
    assert schedule_of(keyed, _headers(x_vgate_deadline_ms="500"), 10.0).deadline == pytest.approx(10.5)
    assert schedule_of(ApiKey("n", b""), [], 10.0).deadline is None
    for bad in ("0", "-1", "soon", "999999999999"):
        with pytest.raises(OpenAIError):
            schedule_of(keyed, _headers(x_vgate_deadline_ms=bad), 0)


# -- the dispatcher: deadlines and shedding with real futures --------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _saturated(policy: str = "fair", **settings: object) -> tuple[Dispatcher, UpstreamPool, Clock]:
    config = GatewaySettings(models=["m"], queue_policy=policy, **{"worker_capacity": 1, **settings})  # type: ignore[arg-type]
    pool = UpstreamPool(eject_after=3, panic_threshold=0.5)
    router = Router(
        pool, "round-robin", declared_models=config.declared_models(), session_header="x", retry_after_s=1
    )
    clock = Clock()
    dispatch = Dispatcher(config, pool, router, QueueMetrics(CollectorRegistry()), clock=clock)
    pool.replace([DiscoveredEndpoint("http://a")])
    pool.passed(pool.all()[0], frozenset({"m"}))
    return dispatch, pool, clock


async def test_a_deadline_the_queue_cannot_meet_is_refused_at_once_with_the_expected_wait() -> None:
    dispatch, _, clock = _saturated()
    busy = await dispatch.acquire(_req("a"))
    backlog = [asyncio.create_task(dispatch.acquire(_req("a"))) for _ in range(12)]
    await asyncio.sleep(0)
    for _ in range(8):  # the worker finishes one request every 0.5 s
        clock.now += 0.5
        dispatch.release(_req("a"), busy)
        await asyncio.sleep(0)
    assert dispatch.stats()["m"]["dispatch_rate_per_s"] == pytest.approx(2.0, rel=0.2)
    urgent = _req("a")  # a's own backlog of 4 is ahead of it: about 2.5 s
    urgent.schedule = Schedule(N, 1.0, deadline=clock.now + 1.0)
    with pytest.raises(OpenAIError) as refused:
        await dispatch.acquire(urgent)
    assert (refused.value.status, refused.value.code) == (503, "deadline_unmeetable")
    assert int(refused.value.headers["Retry-After"]) >= 2
    other = _req("b")  # another key: one turn ahead, about 1 s: within 2 s
    other.schedule = Schedule(N, 1.0, deadline=clock.now + 2.0)
    waiting = asyncio.create_task(dispatch.acquire(other))
    await asyncio.sleep(0)
    assert dispatch.load()["m"]["queued"] == 5
    for task in [*backlog, waiting]:
        task.cancel()
    await asyncio.gather(*backlog, waiting, return_exceptions=True)


async def test_a_deadline_that_passes_while_waiting_ends_the_wait() -> None:
    dispatch, _, clock = _saturated()
    await dispatch.acquire(_req("a"))
    req = _req("b")
    req.schedule = Schedule(N, 1.0, deadline=clock.now + 0.02)  # no rate known yet: it may wait
    with pytest.raises(OpenAIError) as late:
        await dispatch.acquire(req)
    assert (late.value.status, late.value.code) == (503, "deadline_exceeded")


async def test_a_high_priority_arrival_at_a_full_queue_sheds_the_newest_low_one() -> None:
    dispatch, _, _ = _saturated(queue_max_requests=2)
    busy = await dispatch.acquire(_req("a"))
    old_low = asyncio.create_task(dispatch.acquire(_req("a", L)))
    new_low = asyncio.create_task(dispatch.acquire(_req("a", L)))
    await asyncio.sleep(0)
    high = asyncio.create_task(dispatch.acquire(_req("b", H)))
    await asyncio.sleep(0)
    with pytest.raises(OpenAIError) as shed:
        await new_low
    assert (shed.value.status, shed.value.code, shed.value.headers["Retry-After"]) == (503, "queue_shed", "1")
    with pytest.raises(OpenAIError) as full:  # a low arrival has nobody to shed
        await dispatch.acquire(_req("c", L))
    assert full.value.code == "queue_full"
    dispatch.release(_req("a"), busy)
    assert (await high).url == "http://a"
    assert not old_low.done()
    stats = dispatch.stats()["m"]
    assert (stats["shed"], stats["classes"]["low"]["depth"]) == (1, 1)
    old_low.cancel()
    await asyncio.gather(old_low, return_exceptions=True)


async def test_fifo_setting_serves_in_arrival_order_whatever_the_class_and_sheds_nothing() -> None:
    dispatch, _, _ = _saturated("fifo", queue_max_requests=2)
    busy = await dispatch.acquire(_req("a"))
    low = asyncio.create_task(dispatch.acquire(_req("a", L)))
    await asyncio.sleep(0)
    high = asyncio.create_task(dispatch.acquire(_req("b", H)))
    await asyncio.sleep(0)
    with pytest.raises(OpenAIError) as full:  # plain FIFO: a full queue refuses even a high one
        await dispatch.acquire(_req("c", H))
    assert full.value.code == "queue_full"
    dispatch.release(_req("a"), busy)
    await low
    assert not high.done()
    assert dispatch.stats()["m"]["policy"] == "fifo"
    high.cancel()
    await asyncio.gather(high, return_exceptions=True)


async def test_answers_charge_the_key_and_stats_show_it() -> None:
    dispatch, _, _ = _saturated()
    first = _req("a")
    busy = await dispatch.acquire(first)
    queued = _req("b")
    waiting = asyncio.create_task(dispatch.acquire(queued))
    await asyncio.sleep(0)
    dispatch.release(first, busy)
    dispatch.served(first, Usage(prompt_tokens=5, completion_tokens=10))  # before any queue: fast path
    await waiting
    dispatch.served(queued, Usage(prompt_tokens=7, completion_tokens=1))
    keys = dispatch.stats()["m"]["keys"]
    assert keys["b"]["served_tokens"] == pytest.approx(9.0, abs=0.01)
    assert keys["a"]["served_tokens"] == pytest.approx(25.0)


# -- the reserve: a worker's last slots are kept for keys under their share


# (in flight per key, the others active, the key asking, its weight) -> its limit on a worker of 4,
# one worker, a reserve of 1.
RESERVE_TABLE = [
    ("alone: nothing held back", {"a": 3}, "a", 1.0, 4),
    ("over its half of 4 while b is active: the last slot is b's", {"a": 3, "b": 0}, "a", 1.0, 3),
    ("at its half: it may take one more", {"a": 2, "b": 0}, "a", 1.0, 4),
    ("two keys at their share fill every slot", {"a": 2, "b": 2}, "b", 1.0, 4),
    ("the light key may take the reserved slot", {"a": 3, "b": 0}, "b", 1.0, 4),
    ("weight 3 against 1: a share of 3 of 4", {"a": 3, "b": 0}, "a", 3.0, 4),
    ("weight 1 against 3: a share of 1 of 4", {"a": 2, "b": 0}, "a", 1 / 3, 3),
]


@pytest.mark.parametrize(
    ("held", "key", "weight", "limit"), [r[1:] for r in RESERVE_TABLE], ids=[r[0] for r in RESERVE_TABLE]
)
def test_the_reserve_holds_back_a_workers_last_slots_from_a_key_at_its_share(
    held: dict[str, int], key: str, weight: float, limit: int
) -> None:
    shares = Shares(reserve=1)
    for k, n in held.items():
        w = weight if k == key else 1.0
        shares.begin(k, w, 0.0)  # dispatched once: active
        shares.end(k)
        for _ in range(n):
            shares.begin(k, w, 0.0)
    over = shares.over_share(key, weight, slots=lambda: 4, now=1.0)  # one worker of 4
    assert (shares.limit(4) if over else 4) == limit


def test_a_key_that_went_quiet_stops_holding_a_reserve() -> None:
    shares = Shares(reserve=1)
    shares.begin("b", 1.0, 0.0)
    shares.end("b")
    for _ in range(3):
        shares.begin("a", 1.0, 0.0)
    assert shares.over_share("a", 1.0, lambda: 4, now=ACTIVE_S - 1)
    assert not shares.over_share("a", 1.0, lambda: 4, now=ACTIVE_S + 1)  # b sent nothing since: a alone
    shares.begin("b", 1.0, ACTIVE_S + 1)  # b in flight counts whenever it was sent
    assert shares.over_share("a", 1.0, lambda: 4, now=10 * ACTIVE_S)


async def test_under_a_flood_a_light_key_takes_a_reserved_slot_at_once() -> None:
    dispatch, _, _ = _saturated(worker_capacity=4, queue_reserve=1)
    light = _req("b")
    dispatch.release(light, await dispatch.acquire(light))  # b is active
    flood = [_req("a") for _ in range(5)]
    tasks = [asyncio.create_task(dispatch.acquire(r)) for r in flood]
    await asyncio.sleep(0)
    assert [t.done() for t in tasks] == [True, True, True, False, False]  # the 4th slot is held back
    stats = dispatch.stats()["m"]
    assert stats["reserve_per_worker"] == 1
    assert stats["keys"]["a"] == {
        "queued": 2,
        "served_tokens": stats["keys"]["a"]["served_tokens"],
        "in_flight": 3,
    }
    up = dispatch.take_free(light)
    assert up is not None  # at once, past a's backlog: it could not have used the slot
    dispatch.release(light, up)
    await asyncio.sleep(0)
    assert [t.done() for t in tasks] == [True, True, True, False, False]  # still b's
    dispatch.release(flood[0], tasks[0].result())
    await asyncio.sleep(0)
    assert [t.done() for t in tasks] == [True, True, True, True, False]
    for t in tasks:
        t.cancel()


async def test_one_key_alone_fills_every_slot_with_a_reserve_set() -> None:
    dispatch, _, _ = _saturated(worker_capacity=4, queue_reserve=1)
    for _ in range(4):
        assert dispatch.take_free(_req("a")) is not None


def test_a_reserve_must_leave_a_worker_at_least_one_slot() -> None:
    with pytest.raises(
        ValueError, match=r"queue_reserve \(4\) must be below the requests a worker takes \(capacity 4\)"
    ):
        GatewaySettings(worker_capacity=4, queue_reserve=4)
    with pytest.raises(ValueError, match="model 'm': queue_reserve"):
        GatewaySettings(model_settings={"m": {"capacity": 2, "queue_reserve": 2}})


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"worker_capacity": 16}, 2),  # unset: an eighth of a worker's capacity
        ({"worker_capacity": 7}, 0),  # a small worker keeps none
        ({"worker_capacity": 16, "queue_reserve": 0}, 0),
        ({"worker_capacity": 16, "queue_reserve": 5}, 5),
        ({"queue_reserve": 5, "model_settings": {"m": {"capacity": 8, "queue_reserve": 3}}}, 3),
        ({"model_settings": {"m": {"capacity": 8}}}, 1),
    ],
)
def test_the_reserve_of_a_model(settings: dict[str, object], expected: int) -> None:
    assert GatewaySettings(**settings).for_model("m").reserve() == expected  # type: ignore[arg-type]


async def test_a_key_over_its_share_has_at_most_so_many_streams_awaiting_their_first_token() -> None:
    dispatch, _, _ = _saturated(worker_capacity=8, queue_reserve=0, queue_prefills_over_share=1)
    light = _req("b")
    dispatch.release(light, await dispatch.acquire(light))  # b is active: a's share is 4 of 8
    flood = [_req("a", stream=True) for _ in range(7)]
    tasks = [asyncio.create_task(dispatch.acquire(r)) for r in flood]
    await asyncio.sleep(0)
    # Five within its share (0..4 held); the sixth is over it and holds the one prefill place.
    assert [t.done() for t in tasks] == [True] * 6 + [False]
    assert [r.prefilling_on for r in flood[:6]] == [None] * 5 + ["http://a"]
    dispatch.first_token(flood[5])  # its first token: the place is free
    await asyncio.sleep(0)
    assert tasks[6].done()
    assert flood[6].prefilling_on == "http://a"
    dispatch.release(flood[6], tasks[6].result())  # ended before a first token: freed as well
    assert flood[6].prefilling_on is None
    assert dispatch.stats()["m"]["prefills_over_share_per_worker"] == 1
    streamed = _req("a", stream=True)
    assert dispatch.take_free(streamed) is not None  # the place again
    assert dispatch.take_free(_req("a", stream=True)) is None  # held: one awaits its first token
    # A non-streamed answer gives no first-token signal: it is held to the reserve only.
    assert dispatch.take_free(_req("a")) is not None


def _two_workers(**settings: object) -> Dispatcher:
    dispatch, pool, _ = _saturated(**settings)
    pool.replace([DiscoveredEndpoint("http://a"), DiscoveredEndpoint("http://b")])
    for up in pool.all():
        pool.passed(up, frozenset({"m"}))
    return dispatch


async def test_a_flood_is_kept_from_the_prefill_free_workers_and_light_prompts_go_to_them() -> None:
    dispatch = _two_workers(worker_capacity=8, queue_reserve=0, queue_prefill_free_workers=1)
    # Before any key floods, nothing is kept free: requests go where the router sends them.
    quiet = [dispatch.take_free(_req("b")) for _ in range(2)]
    assert {up.url for up in quiet if up is not None} == {"http://a", "http://b"}
    for up in quiet:
        assert up is not None
        dispatch.release(_req("b"), up)
    for _ in range(8):  # a holds its share (8 of 16: b is active): anywhere
        assert dispatch.take_free(_req("a")) is not None
    # Over its share, a goes only to the first worker in URL order; the last is kept free
    # (every gateway process keeps the same one), streamed or not.
    flood = [dispatch.take_free(_req("a", stream=s)) for s in (True, False, True, False)]
    assert [up.url for up in flood if up is not None] == ["http://a"] * 4
    # While a floods, b's prompts go to the free worker first.
    assert [getattr(dispatch.take_free(_req("b", stream=True)), "url", None) for _ in range(3)] == [
        "http://b"
    ] * 3
    # The free worker takes one more (4 of a's from before, now 4 of b's: full); then b still
    # goes where there is room.
    assert getattr(dispatch.take_free(_req("b")), "url", None) == "http://b"
    assert flood[0] is not None
    dispatch.release(_req("a"), flood[0])
    assert getattr(dispatch.take_free(_req("b")), "url", None) == "http://a"


def test_the_free_workers_are_the_last_in_url_order_and_one_is_always_left_to_the_flood() -> None:
    assert Shares(0, 0, 1).kept_free(["http://c", "http://a", "http://b"]) == ["http://c"]
    assert Shares(0, 0, 2).kept_free(["http://c", "http://a", "http://b"]) == ["http://b", "http://c"]
    assert Shares(0, 0, 5).kept_free(["http://c", "http://a", "http://b"]) == ["http://b", "http://c"]
    assert Shares(0, 0, 1).kept_free(["http://a"]) == []
    assert Shares(0, 0, 0).kept_free(["http://a", "http://b"]) == []


async def test_a_key_alone_is_never_kept_from_a_worker() -> None:
    dispatch = _two_workers(worker_capacity=2, queue_reserve=0, queue_prefill_free_workers=1)
    ups = [dispatch.take_free(_req("a", stream=True)) for _ in range(4)]
    assert sorted(up.url for up in ups if up is not None) == ["http://a", "http://a", "http://b", "http://b"]
    waiting = [asyncio.create_task(dispatch.acquire(_req("a", stream=True))) for _ in range(2)]
    await asyncio.sleep(0)
    assert ups[-1] is not None
    dispatch.release(_req("a"), ups[-1])  # a's backlog goes on to whichever worker frees
    await asyncio.sleep(0)
    assert waiting[0].done()
    assert waiting[0].result() is ups[-1]
    assert dispatch.stats()["m"]["prefill_free_workers"] == 1
    for t in waiting:
        t.cancel()


async def test_a_key_with_requests_waiting_is_held_to_its_prefills_even_within_its_share_of_slots() -> None:
    dispatch = _two_workers(worker_capacity=2, queue_reserve=0, queue_prefills_over_share=1)
    light = [_req("b", stream=True) for _ in range(2)]
    ups = [dispatch.take_free(r) for r in light]
    held = [_req("a") for _ in range(2)]
    for r in held:  # a holds 2 of 4 slots: its share, not more
        assert dispatch.take_free(r) is not None
    waiting = [_req("a", stream=True) for _ in range(3)]
    tasks = [asyncio.create_task(dispatch.acquire(r)) for r in waiting]
    await asyncio.sleep(0)
    assert not any(t.done() for t in tasks)
    assert ups[0] is not None
    dispatch.release(light[0], ups[0])
    await asyncio.sleep(0)
    # The head goes with two of a's behind it: a sends more than it is served, so its
    # prefill is counted against the limit although a holds no more than its share of slots.
    assert tasks[0].done()
    assert waiting[0].prefilling_on is not None
    for t in tasks:
        t.cancel()


async def test_a_light_prompt_that_must_share_the_floods_worker_holds_its_next_prefill_back() -> None:
    dispatch = _two_workers(worker_capacity=4, queue_reserve=0, queue_prefill_free_workers=1)
    light = _req("b", weight=3.0)
    dispatch.release(light, await dispatch.acquire(light))  # b is active: a's share is 2 of 8
    flood = []
    while (up := dispatch.take_free(r := _req("a"))) is not None:  # over its share: worker a only
        flood.append((r, up))
    assert [up.url for _, up in flood[-2:]] == ["http://a", "http://a"]
    while dispatch.take_free(_req("b", weight=3.0, stream=True)) is not None:  # b fills the free worker
        pass
    on_a = [(r, up) for r, up in flood if up.url == "http://a"]
    dispatch.release(*on_a[0])
    spilled = _req("b", weight=3.0, stream=True)
    up = dispatch.take_free(spilled)  # the free worker is full: b goes where the flood prefills
    assert up is not None
    assert up.url == "http://a"
    assert spilled.awaiting_first_on == "http://a"
    dispatch.release(*on_a[1])
    streamed = _req("a", stream=True)
    assert dispatch.take_free(streamed) is None  # a slot is free on a, but b's first token comes first
    dispatch.first_token(spilled)
    assert spilled.awaiting_first_on is None
    assert getattr(dispatch.take_free(streamed), "url", None) == "http://a"
