"""The fleet benchmark's queueing model: a fixed fleet bills what it runs, the policy's fleet less."""

from __future__ import annotations

import pytest

from bench.fleet_model import Decide, ModelConfig, default_settings, run, summary, tuned_settings
from bench.fleet_trace import arrivals, oracle_schedule, replica_seconds, standard_trace
from vgate_operator.autoscale.policy import Decision


def fixed(count: int) -> Decide:
    """A policy that always asks for ``count`` replicas."""
    return lambda samples, now, current, ready, settings, state: Decision(count, "fixed", state)


def test_a_fixed_fleet_bills_its_size_all_along_and_at_peak_waits_mostly_in_the_burst() -> None:
    trace, cfg = standard_trace(), ModelConfig()
    outcome = run(trace, tuned_settings(4), seed=3, cfg=cfg, policy=fixed(4))
    assert outcome.replica_seconds == pytest.approx(4 * trace.seconds, rel=1e-3)
    came = list(zip(arrivals(trace, cfg.capacity_rps, 3), outcome.waits, strict=True))
    # Four workers fill up only in the burst (utilisation 1) or in a rare cluster of arrivals.
    outside = [wait for at, wait in came if not 720 <= at <= 800]
    assert sum(wait > cfg.dt for wait in outside) < 0.03 * len(outside)
    longest_at, _ = max(came, key=lambda aw: aw[1])
    assert 720 <= longest_at <= 800


def test_a_fleet_below_the_demand_queues() -> None:
    outcome = run(standard_trace(), tuned_settings(4), seed=3, policy=fixed(2))
    assert max(outcome.waits) > 60


def test_the_first_request_at_zero_waits_one_cold_start() -> None:
    cfg = ModelConfig()
    outcome = run(standard_trace(), tuned_settings(4), seed=3, cfg=cfg)
    assert cfg.cold_start_s <= outcome.waits[0] <= cfg.cold_start_s + cfg.interval_s + cfg.dt


def test_the_policy_bills_between_the_oracle_and_static_peak() -> None:
    trace = standard_trace()
    oracle = replica_seconds(oracle_schedule(trace), trace.seconds)
    for settings in (tuned_settings(4), default_settings(4)):
        bill = run(trace, settings, seed=5).replica_seconds
        assert oracle < bill < 4 * trace.seconds


def test_the_summary_counts_the_seeds_over_half() -> None:
    row = summary("tuned", standard_trace(), tuned_settings(4), range(1, 4))
    assert row["seeds"] == 3
    assert 0.0 <= float(row["over_half"]) <= 1.0
    assert float(row["min"]) <= float(row["mean"]) <= float(row["max"])
