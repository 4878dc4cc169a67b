"""Every engine setting ``vgate tune`` varies moves the simulator the way it moves vLLM."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from vgate.tune.calibrate import fit_line, fit_prefill, kv_tokens, profile
from vgate_worker.sim.engine import Engine, TokenEvent
from vgate_worker.sim.metrics import SimMetrics
from vgate_worker.sim.settings import SimSettings, settings_from_argv

pytestmark = pytest.mark.timeout(20)


def test_gpu_memory_utilization_sizes_the_kv_cache_as_vllm_does() -> None:
    low = SimSettings(gpu_memory_utilization=0.5)
    high = SimSettings(gpu_memory_utilization=0.9)
    # (share x 24 GiB - 2 GiB of weights and activations) / 28,672 bytes a token.
    assert low.kv_capacity_tokens == int((0.5 * 24 - 2) * 2**30 / 28_672)
    assert high.kv_capacity_tokens == pytest.approx(low.kv_capacity_tokens * 19.6 / 10, rel=1e-4)
    assert SimSettings(gpu_memory_utilization=0.5, kv_cache_dtype="fp8").kv_capacity_tokens == pytest.approx(
        2 * low.kv_capacity_tokens, abs=1
    )
    assert SimSettings(kv_cache_memory_bytes=1 << 30).kv_capacity_tokens == (1 << 30) // 28_672


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"gpu_memory_utilization": 0.05}, "No available memory for the cache blocks"),
        ({"kv_cache_memory_bytes": 1 << 20, "max_model_len": 4096}, "To serve at least one request"),
        ({"enable_chunked_prefill": False, "max_num_batched_tokens": 512}, "is smaller than max_model_len"),
    ],
)
def test_settings_vllm_refuses_to_start_with_are_refused_in_its_words(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        SimSettings(**settings)  # type: ignore[arg-type]


def test_the_cpu_backends_kv_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    assert settings_from_argv([]).kv_cache_memory_bytes == 2 << 30
    assert settings_from_argv(["--kv-cache-memory-bytes", str(1 << 30)]).kv_cache_memory_bytes == 1 << 30
    assert settings_from_argv(["--no-enable-prefix-caching"]).enable_prefix_caching is False


async def _hits_after_repeating(settings: SimSettings, prompt: list[int]) -> float:
    """Prefix-cache hits when ``prompt`` is sent, answered, then sent again."""
    engine = Engine(settings, SimMetrics.create(settings.model_name))
    await engine.start()
    try:
        for key in range(2):
            sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
            engine.submit(key, prompt, 2, sink)
            while (await sink.get())[1] is not None:
                pass
    finally:
        await engine.stop()
    labels = {"model_name": settings.model_name}
    return float(engine.metrics.registry.get_sample_value("vllm:prefix_cache_hits_total", labels) or 0.0)


async def test_without_prefix_caching_a_repeated_prompt_is_recomputed() -> None:
    prompt = list(range(200))
    assert await _hits_after_repeating(SimSettings(speed=1000.0), prompt) == 192
    assert await _hits_after_repeating(SimSettings(speed=1000.0, enable_prefix_caching=False), prompt) == 0


def test_without_chunked_prefill_a_prompt_waits_for_a_step_with_room_for_all_of_it() -> None:
    chunked = SimSettings(max_num_batched_tokens=4096, max_model_len=4096)
    whole = SimSettings(max_num_batched_tokens=4096, max_model_len=4096, enable_chunked_prefill=False)
    for settings, first_chunk in ((chunked, 96), (whole, 0)):
        engine = Engine(settings, SimMetrics.create(settings.model_name))
        sink: asyncio.Queue[TokenEvent] = asyncio.Queue()
        from vgate_worker.sim.engine import SimSequence

        a = SimSequence(0, list(range(4000)), [], 4, sink)
        b = SimSequence(1, list(range(100)), [], 4, sink)
        engine.waiting.add(a)
        engine.waiting.add(b)
        engine._plan_step()  # admits both; a's prefill takes the budget first
        assert b.prefill_left == 100 - first_chunk  # chunked: b takes the 96 tokens left over


def test_the_calibration_fit_recovers_the_simulators_own_parameters() -> None:
    assert fit_line([0, 3, 15], [0.01, 0.013, 0.025]) == pytest.approx((0.01, 0.001))
    # Made with: overhead 5 ms, 5,000 tokens/s, 2e-7 s per attended pair (x n^2 / 2), a 10 ms
    # step growing 10 % per sequence, and 1e-6 s per KV token attended while decoding.
    per_kv, short_ctx, long_ctx = 1e-6, 8 + 32, 1024 + 32
    batch = [0.01 * (1 + 0.1 * (c - 1)) + per_kv * c * short_ctx for c in (1, 4, 16)]
    prefill = [0.005 + n / 5000 + 1e-7 * n * n for n in (128, 512, 1024)]
    fitted = profile(
        {
            "decode_clients": [1, 4, 16],
            "decode_tpot_s": batch,
            "decode_long_tpot_s": batch[0] + per_kv * (long_ctx - short_ctx),
            "prefill_tokens": [128, 512, 1024],
            "prefill_ttft_s": prefill,
            "kv_cache_bytes": 1 << 28,
            "kv_tokens": 65_536,
        }
    )
    assert fitted["sim"] == pytest.approx(
        {
            "decode-step-s": 0.01,
            "decode-batch-slope": 0.1,
            "prefill-tokens-per-s": 5000.0,
            "prefill-attention-s": 2e-7,
            "decode-kv-s": 1e-6,
            "kv-bytes-per-token": 4096,
        }
    )
    assert fitted["fixed_overhead_s"] == pytest.approx(0.005)
    assert fitted["sim_args"][:2] == ["--decode-step-s", "0.01"]
    # Noise that would make a longer prompt cheaper is dropped, not fitted.
    assert fit_prefill([128, 512, 1024], [0.01, 0.03, 0.04])[2] == 0.0
    assert kv_tokens("INFO [kv_cache_utils.py:1] GPU KV cache size: 1,234,567 tokens\n") == 1_234_567
