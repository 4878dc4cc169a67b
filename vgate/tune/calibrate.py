"""Calibrate the simulator against a real engine: step time, batch slope, prefill rate, KV size.

    python -m vgate.tune.calibrate --model DIR --out bench/results/tune/sim-profile.json

One real worker (``vgate worker``, so vLLM where it is installed) is started behind the gateway
and measured with four probes, each chosen so one parameter dominates:

- decode: 64-token answers to 8-token prompts at 1, 4 and 16 clients; the median TPOT against
  the batch size is a line whose intercept is the single-sequence step time and whose slope,
  relative to it, is the simulator's ``decode_batch_slope``;
- decode over a long context: the same answer to a 1,024-token prompt, one client; its extra
  TPOT over the short prompt's, per extra context token, is ``decode_kv_s`` (a CPU step reads
  every KV token it attends to; the short probes are corrected for their own few);
- prefill: one-token answers to prompts of 128, 512 and 1,024 tokens, one at a time; TTFT is
  fitted as overhead + n / rate + attention x n^2 / 2 (CPU attention is quadratic: 1,024
  tokens took 16x as long as 256 on the tiny model), giving ``prefill_tokens_per_s`` and
  ``prefill_attention_s``;
- KV size: the tokens vLLM's log says its KV cache holds for the bytes it was given.

The fitted values are written as simulator flags (``sim_args``), which ``vgate tune
--sim-profile FILE`` passes to every simulated worker; the simulator's own defaults (a GPU,
docs/simulator.md) are left alone.
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
from vgate.tune.runner import TrialPlan, check_cpus, serving
from vgate.tune.scenario import ScenarioError, Shape, parse_sweep

KV_BYTES = 256 << 20
DECODE_CLIENTS = (1, 4, 16)
#: Three lengths, for the quadratic's three terms, spanning the prompts a tuning sends.
PREFILL_TOKENS = (128, 512, 1024)
#: The prompts of the two single-client decode probes: short (the batch probes') and long.
SHORT_PROMPT, LONG_PROMPT, DECODE_OUTPUT = 8, 1024, 64
# vLLM's start-up line: "GPU KV cache size: 123,456 tokens" (the CPU backend says GPU too).
_KV_LINE = re.compile(r"KV cache size: ([\d,]+) tokens")


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept and slope."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def fit_quadratic(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares a, b, c of y = a + b x + c x^2 (normal equations, Cramer's rule)."""
    s = [sum(x**k for x in xs) for k in range(5)]
    t = [sum(y * x**k for x, y in zip(xs, ys, strict=True)) for k in range(3)]
    m = [[s[0], s[1], s[2]], [s[1], s[2], s[3]], [s[2], s[3], s[4]]]

    def det(a: list[list[float]]) -> float:
        return (
            a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
            - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
        )

    d = det(m)
    out = []
    for col in range(3):
        swapped = [[t[r] if c == col else m[r][c] for c in range(3)] for r in range(3)]
        out.append(det(swapped) / d)
    return out[0], out[1], out[2]


def fit_prefill(tokens: Sequence[float], ttft: Sequence[float]) -> tuple[float, float, float]:
    """Overhead, seconds per token and attention seconds per token pair, none negative.

    A negative term is noise (it would make some prompt cheaper than a shorter one): it is
    dropped and the rest refitted.
    """
    a, b, c = fit_quadratic(tokens, ttft)
    if c < 0:
        c = 0.0
        a, b = fit_line(tokens, ttft)
    if b <= 0:
        b = 0.0
        a, c = fit_line([x * x for x in tokens], ttft)
    return a, b, 2 * max(c, 0.0)


def kv_tokens(log_text: str) -> int | None:
    """The KV cache's size in tokens from vLLM's start-up log."""
    found = _KV_LINE.findall(log_text)
    return int(found[-1].replace(",", "")) if found else None


def profile(measured: dict[str, Any]) -> dict[str, Any]:
    """Simulator flags from the measurements (pure, so the fit is unit-tested as data)."""
    short_ctx = SHORT_PROMPT + DECODE_OUTPUT / 2
    long_ctx = LONG_PROMPT + DECODE_OUTPUT / 2
    tpots = measured["decode_tpot_s"]
    single = tpots[measured["decode_clients"].index(1)]
    per_kv = max(0.0, (measured["decode_long_tpot_s"] - single) / (long_ctx - short_ctx))
    # The batch probes' own contexts cost per_kv each: take them out before fitting the line.
    clients = [c - 1 for c in measured["decode_clients"]]
    corrected = [t - per_kv * c * short_ctx for c, t in zip(measured["decode_clients"], tpots, strict=True)]
    step, growth = fit_line(clients, corrected)
    overhead, per_token, attention = fit_prefill(measured["prefill_tokens"], measured["prefill_ttft_s"])
    sim: dict[str, float | int] = {
        "decode-step-s": round(step, 6),
        "decode-batch-slope": round(max(growth, 0.0) / step, 5),
        "prefill-tokens-per-s": round(1 / per_token, 1) if per_token > 0 else 1e9,
        "prefill-attention-s": float(f"{attention:.4g}"),
        "decode-kv-s": float(f"{per_kv:.4g}"),
    }
    if measured.get("kv_tokens"):
        sim["kv-bytes-per-token"] = max(1, round(measured["kv_cache_bytes"] / measured["kv_tokens"]))
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

    seeds = iter(range(1, 100))

    def level(clients: int, shape: Shape, count: int) -> list[Any]:
        # A seed of its own per probe: prompts drawn alike would share prefixes, and the prefix
        # cache would serve a longer probe's start from a shorter one's.
        return asyncio.run(
            loadgen.run_level(base, model, [shape] * count, "concurrency", clients, seed=next(seeds))
        )

    level(2, Shape(16, 16), 4)  # warm-up
    short, long = Shape(SHORT_PROMPT, DECODE_OUTPUT), Shape(LONG_PROMPT, DECODE_OUTPUT)
    tpots = [_median_of(level(c, short, max(8, 3 * c)), "tpot") for c in DECODE_CLIENTS]
    prefills = [level(1, Shape(p, 1), 8) for p in PREFILL_TOKENS]
    return {
        "decode_clients": list(DECODE_CLIENTS),
        "decode_tpot_s": tpots,
        "decode_long_tpot_s": _median_of(level(1, long, 8), "tpot"),
        # The engine's own count (its tokenizer's), not the count asked for.
        "prefill_tokens": [_median_of(r, "prompt_tokens") for r in prefills],
        # A one-token answer's whole time: its first token may decode to no text (a part of a
        # character), which a TTFT waits for in vain.
        "prefill_ttft_s": [_median_of(r, "e2e") for r in prefills],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vgate.tune.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model directory or id")
    p.add_argument("--out", required=True, help="the profile JSON to write")
    p.add_argument("--worker-arg", action="append", default=[], help="extra `vgate worker` argument")
    p.add_argument("--engine-arg", action="append", default=[], help="extra vLLM argument")
    p.add_argument("--engine", choices=("vllm", "sim"), default="vllm", help="sim: check the fit round-trips")
    p.add_argument("--engine-cpus", metavar="LIST", help="run the worker on these CPUs (as vgate tune)")
    p.add_argument("--client-cpus", metavar="LIST", help="run the gateway and the probes on these CPUs")
    args = p.parse_args(argv)
    try:
        check_cpus(args.engine_cpus, args.client_cpus)
    except ScenarioError as exc:
        p.error(str(exc))
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
        engine_cpus=args.engine_cpus,
        client_cpus=args.client_cpus,
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
