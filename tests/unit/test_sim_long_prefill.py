"""vLLM's ``--long-prefill-token-threshold`` in the simulator: a long prompt's prefill takes at
most that many tokens a step while another request is running or waiting, so a short prompt
shares the step instead of waiting for the long one's chunks; alone, it takes the whole budget."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from vgate_worker.sim.engine import Engine, SimSequence, TokenEvent
from vgate_worker.sim.metrics import SimMetrics
from vgate_worker.sim.settings import SimSettings, settings_from_argv


def _engine(threshold: int) -> Engine:
    settings = SimSettings(
        max_num_seqs=2, max_num_batched_tokens=64, max_model_len=1024, long_prefill_token_threshold=threshold
    )
    return Engine(settings, SimMetrics.create(settings.model_name))


def _sequences() -> tuple[SimSequence, SimSequence]:
    sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
    return SimSequence(0, list(range(640)), [], 1, sink), SimSequence(1, list(range(10)), [], 1, sink)


def test_alone_a_long_prefill_takes_the_whole_budget() -> None:
    engine = _engine(16)
    long, _ = _sequences()
    engine.waiting.add(long)
    engine._plan_step()
    assert long.prefill_left == 640 - 64


@pytest.mark.parametrize(
    ("threshold", "long_left", "short_emits"),
    [(16, 640 - 64 - 16, True), (0, 640 - 2 * 64, False)],
    ids=["capped: the short prompt's first token comes in the step it arrives",
         "uncapped: it waits for the budget the long one leaves"],
)  # fmt: skip
def test_a_short_prompt_beside_a_long_prefill(threshold: int, long_left: int, short_emits: bool) -> None:
    engine = _engine(threshold)
    long, short = _sequences()
    engine.waiting.add(long)
    engine._plan_step()
    engine.waiting.add(short)
    _, emitting = engine._plan_step()
    assert long.prefill_left == long_left
    assert emitting == ([short] if short_emits else [])


def test_the_threshold_is_a_flag_and_may_not_exceed_the_model_length() -> None:
    assert settings_from_argv(["--long-prefill-token-threshold", "32"]).long_prefill_token_threshold == 32
    assert settings_from_argv([]).long_prefill_token_threshold == 0
    with pytest.raises(ValidationError, match="cannot be greater than the max_model_len"):
        SimSettings(max_model_len=512, long_prefill_token_threshold=1024)
