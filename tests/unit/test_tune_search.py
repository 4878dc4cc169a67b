"""Search strategies replayed against known grids, and infeasible configurations, as data."""

from __future__ import annotations

import math

import pytest

from vgate.tune import search, space
from vgate.tune.search import BayesSearch, Observation, replay

GRID = {"max-num-seqs": (1, 2, 4, 8, 16, 32), "max-num-batched-tokens": (64, 128, 256, 512, 1024)}
CANDIDATES = space.expand(GRID)
POINTS = [space.coordinates(GRID, c) for c in CANDIDATES]


def _smooth_scores() -> list[float | None]:
    """A unimodal landscape like vLLM's: best at a middle batch size and a mid prefill budget."""
    out: list[float | None] = []
    for x, y in POINTS:
        out.append(10 * math.exp(-((x - 0.6) ** 2) / 0.08 - ((y - 0.5) ** 2) / 0.2))
    return out


def _within(observed: list[Observation], scores: list[float | None], share: float) -> bool:
    best = max(s for s in scores if s is not None)
    found = max((o.score for o in observed if o.score is not None), default=0.0)
    return found >= (1 - share) * best


def test_grid_tries_every_candidate_once_in_order() -> None:
    scores = _smooth_scores()
    observed = replay(search.make("grid", POINTS), scores, budget=100)
    assert [o.index for o in observed] == list(range(len(CANDIDATES)))


def test_random_is_a_seeded_permutation() -> None:
    scores = _smooth_scores()
    a = [o.index for o in replay(search.make("random", POINTS, seed=1), scores, 100)]
    b = [o.index for o in replay(search.make("random", POINTS, seed=1), scores, 100)]
    assert a == b
    assert sorted(a) == list(range(len(CANDIDATES)))
    assert a != [o.index for o in replay(search.make("random", POINTS, seed=2), scores, 100)]


def test_bayes_finds_the_best_within_five_percent_in_forty_percent_of_the_grid() -> None:
    scores = _smooth_scores()
    budget = math.floor(0.4 * len(CANDIDATES))
    observed = replay(search.make("bayes", POINTS), scores, budget)
    assert len({o.index for o in observed}) == len(observed) <= budget
    assert _within(observed, scores, 0.05)


def test_bayes_beats_random_on_average_for_the_same_budget() -> None:
    scores = _smooth_scores()
    best = max(s for s in scores if s is not None)
    budget = 8

    def found(strategy: search.Strategy) -> float:
        return max((o.score or 0.0) for o in replay(strategy, scores, budget)) / best

    randoms = [found(search.make("random", POINTS, seed=s)) for s in range(40)]
    assert found(search.make("bayes", POINTS)) > sum(randoms) / len(randoms)


def test_bayes_learns_to_avoid_the_neighbours_of_configurations_that_failed_to_start() -> None:
    # Large batches run out of memory: every max-num-seqs >= 16 fails to start.
    scores: list[float | None] = [
        None if c["max-num-seqs"] >= 16 else float(c["max-num-seqs"]) for c in CANDIDATES
    ]
    strategy = BayesSearch(POINTS)
    observed = replay(strategy, scores, budget=12)
    failed = [o for o in observed if o.score is None]
    # It may probe the failing region, but learns from it: most trials start.
    assert len(failed) <= 3
    # And it rates an untried failing neighbour as unlikely to start.
    untried_bad = [
        i
        for i, c in enumerate(CANDIDATES)
        if c["max-num-seqs"] == 32 and i not in {o.index for o in observed}
    ]
    if failed and untried_bad:
        assert strategy.feasibility(untried_bad[0], observed) < 0.5
    assert _within(observed, scores, 0.05)


def test_bayes_survives_only_failures_and_stops_when_nothing_is_left() -> None:
    scores: list[float | None] = [None] * len(CANDIDATES)
    observed = replay(search.make("bayes", POINTS), scores, budget=len(CANDIDATES) + 5)
    assert len(observed) <= len(CANDIDATES)
    tiny = [(0.0,), (1.0,)]
    assert replay(BayesSearch(tiny), [1.0, 2.0], budget=10) == [Observation(0, 1.0), Observation(1, 2.0)]


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        search.make("annealing", POINTS)


def test_spearman_rank_correlation() -> None:
    from vgate.tune.bench import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9487, abs=1e-4)  # ties share a rank


def test_replaying_a_recorded_grid_measures_each_strategy() -> None:
    from vgate.tune.bench import replay_study

    run = {"grid": {k: list(v) for k, v in GRID.items()}}
    scores = {space.key(c): s for c, s in zip(CANDIDATES, _smooth_scores(), strict=True)}
    study = replay_study(run, scores, seeds=20)
    assert study["grid_size"] == 30
    assert study["budget"] == 12
    assert study["bayes"]["within_5pct_at_budget"] == 1.0
    assert study["bayes"]["mean_trials_to_5pct"] < study["random"]["mean_trials_to_5pct"]


def test_vllm_bench_serves_detailed_results_become_records() -> None:
    from vgate.tune.vllm_bench import records

    result = {
        "start_times": [100.0, 100.5],
        "latencies": [1.0, 2.0],
        "ttfts": [0.1, 0.0],
        "input_lens": [10, 12],
        "output_lens": [5, 0],
        "errors": ["", "Bad Request"],
    }
    ok, failed = records(result)
    assert (ok.start, ok.ttft, ok.e2e, ok.output_tokens, ok.error) == (0.0, 0.1, 1.0, 5, None)
    assert ok.tpot == pytest.approx(0.225)
    assert (failed.start, failed.ttft, failed.error) == (0.5, None, "Bad Request")
