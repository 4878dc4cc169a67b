"""What one load level measured, and how a configuration is scored against the targets.

The definitions are vLLM's ``vllm bench serve``'s, so numbers from our load generator and from
vLLM's sit in one table: TTFT is the time to the first streamed token; TPOT is the time per
output token after the first, ``(e2e - ttft) / (output_tokens - 1)``; E2E is the whole request;
output tokens/s is every output token over the level's wall time.

A level *meets the targets* when its p99 TTFT, p99 TPOT and p99 E2E are within their budgets
and its error rate within the allowed one. A configuration's goodput is the highest request rate
at which it meets them (vLLM's auto_tune: the highest load with p99 under budget); its throughput
score is the output tokens/s there. That rate lies between the heaviest level that meets the
targets and the next, heavier one that misses; :func:`score` places it where a straight line
between the two levels' p99s reaches the budget, rather than at the level below. auto_tune
finds the crossing by running more loads; the line finds it from the two already measured, and
makes the score move a little when a p99 moves a little, where a score read off the levels
alone jumps a whole level when one request is slow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Objective = Literal["goodput", "throughput"]
OBJECTIVES: tuple[str, ...] = ("goodput", "throughput")


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it (seconds from the level's start)."""

    start: float
    ttft: float | None
    e2e: float
    prompt_tokens: int
    output_tokens: int
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass(frozen=True)
class Targets:
    """Service-level targets in seconds (``None``: no target) and the allowed error rate."""

    p99_ttft_s: float | None = None
    p99_tpot_s: float | None = None
    p99_e2e_s: float | None = None
    max_error_rate: float = 0.0

    def describe(self) -> str:
        parts = [
            f"{name} <= {value * 1000:g} ms"
            for name, value in (
                ("p99 TTFT", self.p99_ttft_s),
                ("p99 TPOT", self.p99_tpot_s),
                ("p99 E2E", self.p99_e2e_s),
            )
            if value is not None
        ]
        return ", ".join([*parts, f"errors <= {self.max_error_rate:.0%}"])


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class LevelResult:
    """One load level of one trial, summarised."""

    level: float
    requests: int
    errors: int
    duration_s: float
    output_tokens: int
    ttft_p50: float | None
    ttft_p99: float | None
    tpot_p50: float | None
    tpot_p99: float | None
    e2e_p50: float | None
    e2e_p99: float | None
    output_tps: float
    request_rate: float
    #: Relative difference between the first and second half's output tokens/s.
    drift: float
    first_error: str | None = None
    meets: bool = False
    misses: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["misses"] = list(self.misses)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LevelResult:
        return cls(**{**data, "misses": tuple(data.get("misses", ()))})


def summarise(level: float, records: Sequence[RequestRecord], targets: Targets) -> LevelResult:
    """Percentiles and rates of one level's requests, and whether they meet ``targets``."""
    ok = [r for r in records if r.error is None]
    errors = [r for r in records if r.error is not None]
    duration = max((r.start + r.e2e for r in records), default=0.0) - min(
        (r.start for r in records), default=0.0
    )
    duration = max(duration, 1e-6)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    tpots = [t for r in ok if (t := r.tpot) is not None]
    e2es = [r.e2e for r in ok]
    result = LevelResult(
        level=level,
        requests=len(records),
        errors=len(errors),
        duration_s=duration,
        output_tokens=sum(r.output_tokens for r in ok),
        ttft_p50=percentile(ttfts, 50),
        ttft_p99=percentile(ttfts, 99),
        tpot_p50=percentile(tpots, 50),
        tpot_p99=percentile(tpots, 99),
        e2e_p50=percentile(e2es, 50),
        e2e_p99=percentile(e2es, 99),
        output_tps=sum(r.output_tokens for r in ok) / duration,
        request_rate=len(ok) / duration,
        drift=_drift(ok),
        first_error=errors[0].error if errors else None,
    )
    misses = check(result, targets)
    return LevelResult(**{**asdict(result), "meets": not misses, "misses": tuple(misses)})


def check(result: LevelResult, targets: Targets) -> list[str]:
    """The targets ``result`` misses, each as a short sentence."""
    misses = []
    if result.requests and result.errors / result.requests > targets.max_error_rate:
        misses.append(f"errors {result.errors}/{result.requests}")
    for name, value, budget in (
        ("p99 TTFT", result.ttft_p99, targets.p99_ttft_s),
        ("p99 TPOT", result.tpot_p99, targets.p99_tpot_s),
        ("p99 E2E", result.e2e_p99, targets.p99_e2e_s),
    ):
        if budget is not None and (value is None or value > budget):
            shown = "none" if value is None else f"{value * 1000:.0f} ms"
            misses.append(f"{name} {shown} > {budget * 1000:g} ms")
    return misses


def _drift(records: Sequence[RequestRecord]) -> float:
    """How much the second half of a level ran faster or slower than the first (0 = steady)."""
    if len(records) < 8:
        return 0.0
    ordered = sorted(records, key=lambda r: r.start + r.e2e)
    half = len(ordered) // 2
    rates = []
    for part in (ordered[:half], ordered[half:]):
        span = max(r.start + r.e2e for r in part) - min(r.start for r in part)
        rates.append(sum(r.output_tokens for r in part) / max(span, 1e-6))
    return abs(rates[0] - rates[1]) / max(rates[0], rates[1], 1e-9)


def score(levels: Sequence[LevelResult], objective: Objective, targets: Targets) -> float:
    """Goodput (req/s) or output tokens/s at the highest load meeting every target (0: none meets).

    For each level that meets the targets, followed by a heavier one that misses them on latency
    alone, the score may reach past it: to where each missed p99, drawn as a straight line from
    the lighter level to the heavier, meets its budget (the first of them to do so). A level
    missed on errors, or on a p99 it did not measure, gives no such reach.
    """
    ordered = sorted(levels, key=lambda lv: lv.level)
    best = 0.0
    for n, lv in enumerate(ordered):
        if not lv.meets:
            continue
        value = _value(lv, objective)
        heavier = ordered[n + 1] if n + 1 < len(ordered) else None
        if heavier is not None and not heavier.meets:
            reach = _reach(lv, heavier, targets)
            value = max(value, value + reach * (_value(heavier, objective) - value))
        best = max(best, value)
    return best


def _value(level: LevelResult, objective: Objective) -> float:
    return level.request_rate if objective == "goodput" else level.output_tps


def _reach(light: LevelResult, heavy: LevelResult, targets: Targets) -> float:
    """How far from ``light`` (0) towards ``heavy`` (1) every p99 stays within its budget."""
    if heavy.requests and heavy.errors / heavy.requests > targets.max_error_rate:
        return 0.0
    reach = 1.0
    for name, budget in (
        ("ttft_p99", targets.p99_ttft_s),
        ("tpot_p99", targets.p99_tpot_s),
        ("e2e_p99", targets.p99_e2e_s),
    ):
        if budget is None:
            continue
        low, high = getattr(light, name), getattr(heavy, name)
        if low is None or high is None:
            return 0.0
        if high > budget:
            reach = min(reach, (budget - low) / (high - low))
    return max(0.0, reach)
