"""The simulated scheduler: batch limits, FIFO admission, cancellation, prefix hits, timing model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from vgate_worker.sim.engine import Engine, TokenEvent, chunk_attention, step_duration
from vgate_worker.sim.metrics import SimMetrics
from vgate_worker.sim.settings import SimSettings

pytestmark = pytest.mark.timeout(20)


def make_settings(**kw: object) -> SimSettings:
    # A very high speed keeps the tests fast; ordering, not wall time, is asserted.
    return SimSettings(**{"speed": 1000.0, "max_num_seqs": 2, **kw})  # type: ignore[arg-type]


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    s = make_settings()
    eng = Engine(s, SimMetrics.create(s.model_name))
    await eng.start()
    yield eng
    await eng.stop()


async def drain(sink: asyncio.Queue[TokenEvent], sequences: int) -> list[TokenEvent]:
    events: list[TokenEvent] = []
    while sum(1 for _, i in events if i is None) < sequences:
        events.append(await sink.get())
    return events


async def test_never_more_than_max_num_seqs_and_fifo(engine: Engine) -> None:
    sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
    for key in range(5):
        engine.submit(key, list(range(40)), output_len=6, sink=sink)
    peak = 0
    collector = asyncio.ensure_future(drain(sink, 5))
    while not collector.done():
        peak = max(peak, len(engine.running))
        await asyncio.sleep(0)
    events = collector.result()
    assert peak == 2
    firsts = [k for k, i in events if i == 0]
    assert firsts == [0, 1, 2, 3, 4]
    # The third sequence starts only once one of the first two has finished.
    first_end = min(events.index((0, None)), events.index((1, None)))
    assert events.index((2, 0)) > first_end
    assert engine.cache.used_blocks == 0


async def test_every_sequence_gets_exactly_its_tokens(engine: Engine) -> None:
    sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
    engine.submit(0, list(range(20)), output_len=3, sink=sink, finish_reason="length")
    engine.submit(1, list(range(20)), output_len=7, sink=sink)
    events = await drain(sink, 2)
    assert [i for k, i in events if k == 0] == [0, 1, 2, None]
    assert [i for k, i in events if k == 1] == [0, 1, 2, 3, 4, 5, 6, None]
    sample = engine.metrics.registry.get_sample_value
    for reason in ("length", "stop"):
        labels = {"model_name": engine.settings.model_name, "finished_reason": reason}
        assert sample("vllm:request_success_total", labels) == 1
    assert sample("vllm:generation_tokens_total", {"model_name": engine.settings.model_name}) == 10


async def test_cancel_frees_the_slot_for_the_next_waiting(engine: Engine) -> None:
    sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
    long_a = engine.submit(0, list(range(20)), output_len=100_000, sink=sink)
    long_b = engine.submit(1, list(range(20)), output_len=100_000, sink=sink)
    waiting = engine.submit(2, list(range(20)), output_len=2, sink=sink)
    # Both long sequences produce their first token in the first step; the third must wait.
    assert {(await sink.get())[0] for _ in range(2)} == {0, 1}
    assert len(engine.running) == 2
    assert list(engine.waiting) == [waiting]
    engine.cancel(long_a)
    assert len(engine.running) == 1
    got: list[TokenEvent] = []
    while (2, None) not in got:
        got.append(await sink.get())
    engine.cancel(long_b)
    assert not engine.running
    assert not engine.waiting
    assert engine.cache.used_blocks == 0


async def test_repeated_prompt_hits_the_prefix_cache(engine: Engine) -> None:
    sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
    prompt = list(range(100))
    first = engine.submit(0, prompt, output_len=1, sink=sink)
    await drain(sink, 1)
    second = engine.submit(1, prompt, output_len=1, sink=sink)
    await drain(sink, 1)
    assert first.cached_tokens == 0
    assert second.cached_tokens == 96  # six full blocks; the last token is always recomputed
    labels = {"model_name": engine.settings.model_name}
    sample = engine.metrics.registry.get_sample_value
    assert sample("vllm:prefix_cache_hits_total", labels) == 96
    assert sample("vllm:prefix_cache_queries_total", labels) == 200


def test_step_time_matches_the_published_calibration() -> None:
    s = SimSettings()
    single = 1 / step_duration(s, 0, 1)
    batch4 = 4 / step_duration(s, 0, 4)
    assert single == pytest.approx(650, rel=0.01)
    assert batch4 == pytest.approx(2500, rel=0.01)
    # Prefill is priced by uncached tokens only and is far cheaper per token than decode.
    assert step_duration(s, 2000, 1) - step_duration(s, 0, 1) == pytest.approx(2000 / s.prefill_tokens_per_s)
    assert s.prefill_tokens_per_s > 10 * single
    # A GPU's attention costs nothing extra at these lengths: both attention terms default to 0.
    assert step_duration(s, 2000, 4, attended=2e6, kv_tokens=8000) == step_duration(s, 2000, 4)


def test_cpu_attention_makes_long_prompts_and_contexts_cost_more_than_linearly() -> None:
    s = SimSettings(prefill_attention_s=1e-7, decode_kv_s=1e-6)
    # One 1,024-token prompt whole costs more than four 256-token ones; split into two chunks
    # the second half attends to the first, so the chunks together cost what the whole does.
    whole = step_duration(s, 1024, 0, chunk_attention(0, 1024))
    assert whole > 4 * step_duration(s, 256, 0, chunk_attention(0, 256))
    halves = step_duration(s, 512, 0, chunk_attention(0, 512)) + step_duration(
        s, 512, 0, chunk_attention(512, 512)
    )
    assert halves == pytest.approx(whole)
    # A decode step over long contexts is slower than the same batch over short ones.
    assert step_duration(s, 0, 8, kv_tokens=8 * 1000) - step_duration(
        s, 0, 8, kv_tokens=8 * 10
    ) == pytest.approx(1e-6 * 8 * 990)


async def test_identical_requests_arriving_together_both_prefill(engine: Engine) -> None:
    sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
    prompt = list(range(100))
    twins = [engine.submit(k, prompt, output_len=1, sink=sink) for k in range(2)]
    await drain(sink, 2)
    assert [s.cached_tokens for s in twins] == [0, 0]
    later = engine.submit(2, prompt, output_len=1, sink=sink)
    await drain(sink, 1)
    assert later.cached_tokens == 96


async def test_a_crashed_scheduler_releases_every_waiter(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "_plan_step", broken)
    sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
    engine.submit(0, list(range(20)), output_len=5, sink=sink)
    assert await sink.get() == (0, None)
    assert not engine.alive
    with pytest.raises(RuntimeError):
        engine.submit(1, list(range(20)), output_len=5, sink=sink)


async def test_a_stalled_scheduler_fails_instead_of_hanging(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "_plan_step", lambda: (0.0, []))
    sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
    engine.submit(0, list(range(20)), output_len=5, sink=sink)
    assert await sink.get() == (0, None)
    assert not engine.alive
