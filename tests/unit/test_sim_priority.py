"""The simulated scheduler's two policies, as vLLM V1 schedules: fcfs and priority.

Under ``priority`` waiting sequences are admitted by ``(priority, arrival)``, lower first; a
waiting sequence never preempts a running one; when a running sequence needs a KV block and
none is free, the least urgent running one (latest among equals) is preempted and recomputed
later, without sending its tokens twice. Under ``fcfs`` the priority is ignored and the last
admitted is preempted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from vgate_worker.sim.engine import Engine, SimSequence, TokenEvent
from vgate_worker.sim.metrics import SimMetrics
from vgate_worker.sim.settings import SimSettings, settings_from_argv
from vgate_worker.sim.waiting import SchedulingPolicy, WaitingQueue, preemption_victim

pytestmark = pytest.mark.timeout(20)


@dataclass(eq=False)
class Item:
    name: str
    priority: int
    arrival: float


def test_priority_queue_serves_lower_values_first_then_arrival() -> None:
    queue: WaitingQueue[Item] = WaitingQueue("priority")
    for item in [Item("late-urgent", 0, 3.0), Item("normal", 5, 1.0), Item("early-urgent", 0, 2.0)]:
        queue.add(item)
    queue.prepend(Item("preempted", 5, 0.5))  # no front in a priority queue: it takes its rank
    assert [i.name for i in queue] == ["early-urgent", "late-urgent", "preempted", "normal"]
    assert [queue.pop().name for _ in range(len(queue))] == [
        "early-urgent",
        "late-urgent",
        "preempted",
        "normal",
    ]


def test_fcfs_queue_ignores_priority_and_puts_a_preempted_sequence_first() -> None:
    queue: WaitingQueue[Item] = WaitingQueue("fcfs")
    queue.add(Item("a", 9, 1.0))
    queue.add(Item("b", 0, 2.0))
    queue.prepend(Item("preempted", 9, 3.0))
    assert [i.name for i in queue] == ["preempted", "a", "b"]


def test_removing_a_cancelled_sequence_keeps_the_order() -> None:
    queue: WaitingQueue[Item] = WaitingQueue("priority")
    items = [Item(str(n), n % 3, float(n)) for n in range(6)]
    for item in items:
        queue.add(item)
    queue.remove(items[3])
    assert items[3] not in queue
    assert [i.name for i in queue] == ["0", "1", "4", "2", "5"]


def test_the_victim_is_the_least_urgent_latest_or_the_last_admitted() -> None:
    running = [Item("a", 1, 1.0), Item("b", 7, 2.0), Item("c", 7, 3.0), Item("d", 0, 4.0)]
    assert preemption_victim(running, "priority").name == "c"
    assert preemption_victim(running, "fcfs").name == "d"


def test_the_policy_flag_is_validated() -> None:
    assert settings_from_argv(["--scheduling-policy", "priority"]).scheduling_policy == "priority"
    assert settings_from_argv([]).scheduling_policy == "fcfs"
    with pytest.raises(SystemExit):
        settings_from_argv(["--scheduling-policy", "lifo"])
    with pytest.raises(ValidationError):
        SimSettings(scheduling_policy="lifo")  # type: ignore[arg-type]


def _settings(policy: SchedulingPolicy, **kw: object) -> SimSettings:
    return SimSettings(**{"speed": 1000.0, "max_num_seqs": 1, "scheduling_policy": policy, **kw})  # type: ignore[arg-type]


@pytest.fixture
async def engines() -> AsyncIterator[list[Engine]]:
    started: list[Engine] = []
    yield started
    for engine in started:
        await engine.stop()


async def _engine(started: list[Engine], settings: SimSettings) -> Engine:
    engine = Engine(settings, SimMetrics.create(settings.model_name))
    await engine.start()
    started.append(engine)
    return engine


async def _drain(sink: asyncio.Queue[TokenEvent], sequences: int) -> list[TokenEvent]:
    events: list[TokenEvent] = []
    while sum(1 for _, i in events if i is None) < sequences:
        events.append(await sink.get())
    return events


@pytest.mark.parametrize(
    ("policy", "order"), [("priority", [0, 2, 3, 1]), ("fcfs", [0, 1, 2, 3])], ids=["priority", "fcfs"]
)
async def test_waiting_sequences_are_admitted_in_the_policys_order(
    engines: list[Engine], policy: SchedulingPolicy, order: list[int]
) -> None:
    engine = await _engine(engines, _settings(policy))
    sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
    engine.submit(0, list(range(20)), output_len=8, sink=sink, priority=5)
    first = await sink.get()  # running: it holds the only slot
    for key, priority in [(1, 9), (2, -1), (3, 4)]:
        engine.submit(key, list(range(20)), output_len=2, sink=sink, priority=priority)
    events = [first, *await _drain(sink, 4)]
    assert [k for k, i in events if i == 0] == order


async def test_an_urgent_arrival_does_not_preempt_a_running_sequence(engines: list[Engine]) -> None:
    # vLLM V1 preempts only for KV blocks a running sequence needs, never to admit a waiting one.
    engine = await _engine(engines, _settings("priority"))
    sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
    engine.submit(0, list(range(20)), output_len=30, sink=sink, priority=100)
    await sink.get()  # running, first token out
    engine.submit(1, list(range(20)), output_len=1, sink=sink, priority=-100)
    events = await _drain(sink, 2)
    assert events.index((0, None)) < events.index((1, 0))
    assert engine.metrics.preemptions._value.get() == 0


def test_a_running_prefill_keeps_the_step_budget_before_an_urgent_arrival() -> None:
    # Running sequences are scheduled first, in admission order: an urgent short prompt arriving
    # next to a long prefill waits for the budget that prefill leaves (none, here).
    settings = _settings("priority", max_num_seqs=2, max_num_batched_tokens=64, max_model_len=1024)
    engine = Engine(settings, SimMetrics.create(settings.model_name))
    sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
    long = SimSequence(0, list(range(640)), [], 1, sink, priority=9)
    urgent = SimSequence(1, list(range(10)), [], 1, sink, priority=-9)
    engine.waiting.add(long)
    engine._plan_step()
    engine.waiting.add(urgent)
    _, emitting = engine._plan_step()
    assert long.prefill_left == 640 - 2 * 64
    assert urgent in engine.waiting
    assert not emitting


@pytest.mark.parametrize(
    ("policy", "victim", "survivor"), [("priority", 0, 1), ("fcfs", 1, 0)], ids=["priority", "fcfs"]
)
async def test_out_of_kv_blocks_the_policys_victim_is_preempted_and_recomputed(
    engines: list[Engine], policy: SchedulingPolicy, victim: int, survivor: int
) -> None:
    # Six blocks of 16 tokens; two sequences of 30 prompt tokens growing to 60 need eight.
    settings = _settings(policy, max_num_seqs=2, kv_cache_tokens=96, max_model_len=64, block_size=16)
    engine = await _engine(engines, settings)
    sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
    first = engine.submit(0, list(range(30)), output_len=30, sink=sink, priority=5)
    second = engine.submit(1, list(range(100, 130)), output_len=30, sink=sink, priority=0)
    events = await _drain(sink, 2)
    seqs = {0: first, 1: second}
    assert seqs[victim].preemptions >= 1
    assert seqs[survivor].preemptions == 0
    assert events.index((survivor, None)) < events.index((victim, None))
    for key in (0, 1):  # every token once, in order: nothing streamed twice after a recompute
        assert [i for k, i in events if k == key] == [*range(30), None]
    assert engine.metrics.preemptions._value.get() >= 1
    assert engine.cache.used_blocks == 0
