"""Calibrate the simulator against a real engine: step time, batch slope, prefill rate, KV size.

    python -m vgate.tune.calibrate --model DIR --out bench/results/tune/sim-profile.json

One real worker (``vgate worker``, so vLLM where it is installed) is started behind the gateway
and measured with three probes, each chosen so one parameter dominates:

- decode: 64-token answers to 8-token prompts at 1, 4 and 16 clients; the median TPOT against
  the batch size is a line whose intercept is the single-sequence step time and whose slope,
  relative to it, is the simulator's ``decode_batch_slope``;
- prefill: one-token answers to prompts of 128 and 512 tokens, one at a time; the TTFT
  difference over the token difference is the prefill rate;
- KV size: the tokens vLLM's log says its KV cache holds for the bytes it was given.

The fitted values are written as simulator flags (``sim_args``), which ``vgate tune
--sim-profile FILE`` passes to every simulated worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vgate.tune import loadgen
from vgate.tune.measure import Targets
from vgate.tune.runner import TrialPlan, serving
from vgate.tune.scenario import Shape, parse_sweep

KV_BYTES = 256 << 20
DECODE_CLIENTS = (1, 4, 16)
#: Around the prompts a tuning sends: on CPU, attention makes a prefill grow faster than linearly
#: beyond them (1,024 tokens took 16x as long as 256 on the tiny model), and the simulator's rate is linear.
PREFILL_TOKENS = (128, 512)
# vLLM's start-up line: "GPU KV cache size: 123,456 tokens" (the CPU backend says GPU too).
_KV_LINE = re.compile(r"KV cache size: ([\d,]+) tokens")


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept and slope."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def kv_tokens(log_text: str) -> int | None:
    """The KV cache's size in tokens from vLLM's start-up log."""
    found = _KV_LINE.findall(log_text)
    return int(found[-1].replace(",", "")) if found else None


def profile(measured: dict[str, Any]) -> dict[str, Any]:
    """Simulator flags from the measurements (pure, so the fit is unit-tested as data)."""
    clients = [c - 1 for c in measured["decode_clients"]]
    step, growth = fit_line(clients, measured["decode_tpot_s"])
    (p1, p2), (t1, t2) = measured["prefill_tokens"], measured["prefill_ttft_s"]
    rate = (p2 - p1) / max(t2 - t1, 1e-6)
    sim: dict[str, float | int] = {
        "decode-step-s": round(step, 6),
        "decode-batch-slope": round(max(growth, 0.0) / step, 5),
        "prefill-tokens-per-s": round(rate, 1),
    }
    if measured.get("kv_tokens"):
        sim["kv-bytes-per-token"] = max(1, round(measured["kv_cache_bytes"] / measured["kv_tokens"]))
    overhead = t1 - p1 / rate - step
    return {
        "measured": measured,
        "fixed_overhead_s": round(overhead, 5),
        "sim": sim,
        "sim_args": [arg for name, value in sim.items() for arg in (f"--{name}", str(value))],
    }


def _median_of(records: Sequence[Any], attr: str) -> float:
    values = [v for r in records if r.error is None and (v := getattr(r, attr)) is not None]
    if not values:
        errors = [r.error for r in records if r.error]
        raise RuntimeError(f"no successful requests to measure {attr}: {errors[:1]}")
    return float(statistics.median(values))


def measure(base: str, model: str) -> dict[str, Any]:
    """Run the decode and prefill probes against ``base``."""

    def level(clients: int, shape: Shape, count: int) -> list[Any]:
        return asyncio.run(
            loadgen.run_level(base, model, [shape] * count, "concurrency", clients, seed=clients)
        )

    level(2, Shape(16, 16), 4)  # warm-up
    tpots = [_median_of(level(c, Shape(8, 64), max(8, 3 * c)), "tpot") for c in DECODE_CLIENTS]
    ttfts = [_median_of(level(1, Shape(p, 1), 8), "ttft") for p in PREFILL_TOKENS]
    return {
        "decode_clients": list(DECODE_CLIENTS),
        "decode_tpot_s": tpots,
        "prefill_tokens": list(PREFILL_TOKENS),
        "prefill_ttft_s": ttfts,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vgate.tune.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model directory or id")
    p.add_argument("--out", required=True, help="the profile JSON to write")
    p.add_argument("--worker-arg", action="append", default=[], help="extra `vgate worker` argument")
    p.add_argument("--engine-arg", action="append", default=[], help="extra vLLM argument")
    p.add_argument("--engine", choices=("vllm", "sim"), default="vllm", help="sim: check the fit round-trips")
    args = p.parse_args(argv)
    out = Path(args.out)
    plan = TrialPlan(
        engine=args.engine,
        model=args.model,
        served_name="calibration",
        sweep=parse_sweep("concurrency", "1"),
        shapes={},
        targets=Targets(),
        objective="throughput",
        worker_args=("--max-model-len", "2048", *args.worker_arg),
        engine_args=tuple(args.engine_arg),
    )
    config = {"max-num-seqs": 32, "max-num-batched-tokens": 2048, "kv-cache-memory-bytes": KV_BYTES}
    work = out.parent / f"{out.stem}-run"
    with serving(plan, config, work) as (base, _):
        measured = measure(base, plan.served_name)
    measured["kv_cache_bytes"] = KV_BYTES
    measured["kv_tokens"] = kv_tokens((work / "worker.log").read_text(errors="replace"))
    result = profile(measured)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["sim"], indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
