"""Search strategies over a finite grid of configurations: pure functions of what was observed.

Every strategy answers one question, ``propose(observed) -> index | None``: which candidate to
try next, given the scores seen so far (``None`` for a configuration that did not start). They
hold no I/O and no clock, so the tests replay them against recorded grids as data.

- ``grid``: every candidate in order (the reference every other strategy is judged against).
- ``random``: a seeded shuffle (the baseline a smarter strategy must beat).
- ``bayes``: Bayesian optimisation. A Gaussian process over the candidates' ordinal coordinates
  predicts each untried configuration's score; expected improvement picks the next, weighted by
  the probability that it starts at all, learned from the neighbours that failed (SCOOT's
  crash-constraint idea, here as kernel-weighted counts).

A trial's cost is dominated by starting the engine (a minute for vLLM's CPU build here, model
loading and CUDA-graph capture on GPUs), so strategies are judged by trials, not requests; that
is why successive halving, which saves requests but restarts every configuration, is not one of
them (docs/tune.md has the measurement).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

STRATEGIES = ("grid", "random", "bayes")


@dataclass(frozen=True)
class Observation:
    index: int
    #: The objective (higher is better); ``None``: the configuration failed to start.
    score: float | None


class Strategy(Protocol):
    def propose(self, observed: Sequence[Observation]) -> int | None:
        """The next candidate's index, or ``None`` when the strategy has nothing left to try."""
        ...


@dataclass
class GridSearch:
    size: int

    def propose(self, observed: Sequence[Observation]) -> int | None:
        seen = {o.index for o in observed}
        return next((i for i in range(self.size) if i not in seen), None)


@dataclass
class RandomSearch:
    size: int
    seed: int = 0

    def propose(self, observed: Sequence[Observation]) -> int | None:
        order = list(range(self.size))
        random.Random(self.seed).shuffle(order)
        seen = {o.index for o in observed}
        return next((i for i in order if i not in seen), None)


def _kernel(a: Sequence[float], b: Sequence[float], length: float) -> float:
    d2 = sum((x - y) ** 2 for x, y in zip(a, b, strict=True))
    return math.exp(-d2 / (2 * length * length))


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """Solve a small symmetric positive-definite system by Cholesky (no numpy needed)."""
    n = len(rhs)
    low = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            s = matrix[i][j] - sum(low[i][k] * low[j][k] for k in range(j))
            low[i][j] = math.sqrt(max(s, 1e-12)) if i == j else s / low[j][j]
    y = [0.0] * n
    for i in range(n):
        y[i] = (rhs[i] - sum(low[i][k] * y[k] for k in range(i))) / low[i][i]
    x = [0.0] * n
    for i in reversed(range(n)):
        x[i] = (y[i] - sum(low[k][i] * x[k] for k in range(i + 1, n))) / low[i][i]
    return x


def _normal_pdf(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@dataclass
class BayesSearch:
    """GP expected improvement over the candidates, times the learned chance that one starts."""

    points: Sequence[Sequence[float]]
    #: Configurations tried before the model is trusted: spread out, farthest-first.
    initial: int = 3
    length: float = 0.35
    noise: float = 0.05
    #: A candidate this likely to fail to start is not tried at all.
    min_feasible: float = 0.35

    def propose(self, observed: Sequence[Observation]) -> int | None:
        seen = {o.index for o in observed}
        untried = [i for i in range(len(self.points)) if i not in seen]
        if not untried:
            return None
        if len(observed) < self.initial:
            return self._spread(untried, seen)
        if all(o.score is None for o in observed):
            return self._spread(untried, seen)
        scored = [(self._acquisition(i, observed), -i) for i in untried]
        best, neg_index = max(scored)
        return -neg_index if best > 0 else None

    def _spread(self, untried: list[int], seen: set[int]) -> int:
        """Farthest from everything tried; the first pick is the candidate nearest the centre."""
        if not seen:
            centre = [0.5] * len(self.points[0])
            return min(untried, key=lambda i: (_dist(self.points[i], centre), i))
        return max(untried, key=lambda i: (min(_dist(self.points[i], self.points[j]) for j in seen), -i))

    def feasibility(self, index: int, observed: Sequence[Observation]) -> float:
        """Kernel-weighted share of nearby configurations that started (half a pseudo-count each way)."""
        ok = bad = 0.5
        for o in observed:
            weight = _kernel(self.points[index], self.points[o.index], self.length)
            if o.score is None:
                bad += weight
            else:
                ok += weight
        return ok / (ok + bad)

    def _acquisition(self, index: int, observed: Sequence[Observation]) -> float:
        p_ok = self.feasibility(index, observed)
        if p_ok < self.min_feasible:
            return 0.0
        mean, sd, best = self._predict(index, observed)
        if sd <= 1e-9:
            return 0.0
        z = (mean - best) / sd
        return p_ok * ((mean - best) * _normal_cdf(z) + sd * _normal_pdf(z))

    def _predict(self, index: int, observed: Sequence[Observation]) -> tuple[float, float, float]:
        """Posterior mean and deviation at ``index``, and the best score, all scaled to the best.

        A configuration that failed to start counts as scoring zero: it pulls its neighbours'
        predictions down as well as making them unlikely to start.
        """
        top = max(abs(o.score or 0.0) for o in observed) or 1.0
        ys = [(o.score or 0.0) / top for o in observed]
        prior = sum(ys) / len(ys)
        xs = [self.points[o.index] for o in observed]
        gram = [
            [_kernel(a, b, self.length) + (self.noise**2 if i == j else 0.0) for j, b in enumerate(xs)]
            for i, a in enumerate(xs)
        ]
        alpha = _solve(gram, [y - prior for y in ys])
        k = [_kernel(self.points[index], x, self.length) for x in xs]
        mean = prior + sum(ki * ai for ki, ai in zip(k, alpha, strict=True))
        v = _solve(gram, k)
        var = max(1e-12, 1.0 - sum(ki * vi for ki, vi in zip(k, v, strict=True)))
        return mean, math.sqrt(var), max(ys)


def _dist(a: Sequence[float], b: Sequence[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def make(name: str, points: Sequence[Sequence[float]], seed: int = 0) -> Strategy:
    """The strategy called ``name`` over candidates at ``points``."""
    if name == "grid":
        return GridSearch(len(points))
    if name == "random":
        return RandomSearch(len(points), seed)
    if name == "bayes":
        return BayesSearch(points)
    raise ValueError(f"unknown strategy {name!r}; one of {', '.join(STRATEGIES)}")


def replay(strategy: Strategy, scores: Sequence[float | None], budget: int) -> list[Observation]:
    """Run ``strategy`` against known scores (a recorded grid) for at most ``budget`` trials."""
    observed: list[Observation] = []
    while len(observed) < budget:
        index = strategy.propose(observed)
        if index is None:
            break
        observed.append(Observation(index, scores[index]))
    return observed
