"""The fleet benchmark's pure parts: the demand trace, its arrivals, the oracle's schedule, the bill.

Demand is measured in *workers' capacity*: 1.0 is the request rate one worker serves at its
batch limit. A trace is a list of phases, each a linear segment of demand; everything here
works in whatever seconds the trace is given in (the benchmark compresses the whole trace by
one factor and converts back for the report).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

#: Demand a hair above an integer (float noise of a ramp) does not ask for one more worker.
_EPS = 1e-9


@dataclass(frozen=True)
class Phase:
    """``seconds`` of demand going linearly from ``start`` to ``end`` workers' capacity."""

    name: str
    seconds: float
    start: float
    end: float


@dataclass(frozen=True)
class Trace:
    phases: tuple[Phase, ...]

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    @property
    def peak(self) -> float:
        return max(max(p.start, p.end) for p in self.phases)

    def scaled(self, factor: float) -> Trace:
        """The same trace with every duration multiplied by ``factor`` (0.1: ten times faster)."""
        return Trace(tuple(Phase(p.name, p.seconds * factor, p.start, p.end) for p in self.phases))

    def demand(self, t: float) -> float:
        """Demand at ``t`` seconds into the trace, in workers' capacity (0 outside it)."""
        begin = 0.0
        for p in self.phases:
            if begin <= t < begin + p.seconds:
                return p.start + (p.end - p.start) * (t - begin) / p.seconds
            begin += p.seconds
        return 0.0

    def mean(self) -> float:
        """Average demand over the whole trace (idle phases included)."""
        area = sum((p.start + p.end) / 2 * p.seconds for p in self.phases)
        return area / self.seconds

    def boundaries(self) -> list[tuple[str, float]]:
        """(phase name, start time) of every phase."""
        out, begin = [], 0.0
        for p in self.phases:
            out.append((p.name, begin))
            begin += p.seconds
        return out


def standard_trace() -> Trace:
    """Idle 2 min; ramp 0 → 3 workers over 5 min; hold 5 min; a 30 s burst at 4; ramp 3 → 0 over 5 min; idle 5 min."""
    return Trace(
        (
            Phase("idle", 120.0, 0.0, 0.0),
            Phase("ramp up", 300.0, 0.0, 3.0),
            Phase("hold", 300.0, 3.0, 3.0),
            Phase("burst", 30.0, 4.0, 4.0),
            Phase("ramp down", 300.0, 3.0, 0.0),
            Phase("idle", 300.0, 0.0, 0.0),
        )
    )


def arrivals(trace: Trace, capacity_rps: float, seed: int) -> list[float]:
    """Open-loop Poisson arrival times at rate ``demand(t) * capacity_rps`` (thinning, Lewis-Shedler).

    The same seed gives every system the same requests at the same moments.
    """
    rng = random.Random(seed)
    top = trace.peak * capacity_rps
    if top <= 0:
        return []
    out, t = [], 0.0
    while True:
        t += rng.expovariate(top)
        if t >= trace.seconds:
            return out
        if rng.random() * top < trace.demand(t) * capacity_rps:
            out.append(t)


def workers_for(demand: float) -> int:
    """Workers a demand needs: its ceiling, with float noise above an integer ignored."""
    return max(0, math.ceil(demand - _EPS))


def oracle_schedule(trace: Trace) -> list[tuple[float, int]]:
    """(from time, workers) steps of ``ceil(demand)``: the workers an instant, all-knowing scaler runs.

    Exact for linear phases: a ramp changes its ceiling where it crosses an integer.
    """
    cuts: set[float] = {0.0}
    begin = 0.0
    for p in trace.phases:
        cuts.add(begin)
        lo, hi = sorted((p.start, p.end))
        for k in range(math.floor(lo) + 1, math.ceil(hi)):
            cuts.add(begin + (k - p.start) / (p.end - p.start) * p.seconds)
        begin += p.seconds
    times = sorted(c for c in cuts if c < trace.seconds)
    steps: list[tuple[float, int]] = []
    for i, at in enumerate(times):
        until = times[i + 1] if i + 1 < len(times) else trace.seconds
        n = workers_for(trace.demand((at + until) / 2))
        if not steps or steps[-1][1] != n:
            steps.append((at, n))
    return steps


def replicas_at(steps: Sequence[tuple[float, int]], t: float) -> int:
    """The count of a step function at ``t`` (0 before its first step)."""
    n = 0
    for at, count in steps:
        if at > t:
            break
        n = count
    return n


def replica_seconds(steps: Sequence[tuple[float, int]], end: float, begin: float = 0.0) -> float:
    """The area under a step function of replicas over [begin, end]: the GPU bill in worker-seconds."""
    total = 0.0
    for i, (at, count) in enumerate(steps):
        until = steps[i + 1][0] if i + 1 < len(steps) else end
        lo, hi = max(at, begin), min(until, end)
        if hi > lo:
            total += count * (hi - lo)
    return total


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def wait_quantile(buckets: Sequence[tuple[float, float]], served: float, q: float) -> float | None:
    """Quantile ``q`` of the queue wait over every served request, from the gateway's histogram.

    ``buckets`` are the histogram's cumulative (le, count) pairs; it counts only requests that
    waited, so the ``served - count`` others waited 0. Inside a bucket the rank is interpolated
    linearly, as Prometheus' ``histogram_quantile`` does. None when nothing was served.
    """
    if served <= 0:
        return None
    ordered = sorted(buckets)
    waited = ordered[-1][1] if ordered else 0.0
    rank = q * served - (served - waited)
    if rank <= 0:
        return 0.0
    lower_le, lower_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return lower_le  # beyond the last finite bucket: its bound is all that is known
            span = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / span if span else 1.0)
        lower_le, lower_count = le, count
    return lower_le
