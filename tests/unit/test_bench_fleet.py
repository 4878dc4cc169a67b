"""``make bench-fleet``'s pure parts: the trace and its arrivals, the oracle's schedule, the bill, the quantiles."""

from __future__ import annotations

import json

import pytest

from bench.fleet_report import _steps, render_markdown, summarize, to_json
from bench.fleet_trace import (
    Phase,
    Trace,
    arrivals,
    oracle_schedule,
    percentile,
    replica_seconds,
    replicas_at,
    standard_trace,
    wait_quantile,
    workers_for,
)


def test_the_standard_trace_has_the_six_phases_and_their_demand() -> None:
    trace = standard_trace()
    assert [(p.name, p.seconds) for p in trace.phases] == [
        ("idle", 120), ("ramp up", 300), ("hold", 300), ("burst", 30), ("ramp down", 300), ("idle", 300),
    ]  # fmt: skip
    assert trace.seconds == 1350
    assert trace.demand(60) == 0
    assert trace.demand(120 + 150) == pytest.approx(1.5)  # half-way up the ramp
    assert trace.demand(500) == 3
    assert trace.demand(735) == 4  # the burst
    assert trace.demand(750 + 100) == pytest.approx(2.0)  # a third of the way down
    assert trace.demand(1200) == 0
    # 450 + 900 + 120 + 450 worker-seconds of demand over 1350 s.
    assert trace.mean() == pytest.approx(1920 / 1350)
    assert trace.peak == 4


def test_compressing_a_trace_keeps_its_shape() -> None:
    trace = standard_trace()
    fast = trace.scaled(0.1)
    assert fast.seconds == pytest.approx(135)
    assert fast.demand(50) == pytest.approx(trace.demand(500))
    assert fast.mean() == pytest.approx(trace.mean())
    assert [at for _, at in fast.boundaries()] == pytest.approx([0, 12, 42, 72, 75, 105])


def test_arrivals_follow_the_demand_and_repeat_with_the_seed() -> None:
    trace = standard_trace()
    times = arrivals(trace, capacity_rps=2.0, seed=3)
    assert times == arrivals(trace, capacity_rps=2.0, seed=3)
    assert times != arrivals(trace, capacity_rps=2.0, seed=4)
    assert times == sorted(times)
    # None while the demand is zero.
    assert not [t for t in times if t < 120 or t >= 1050]
    # Poisson counts: the hold (3 workers x 2 req/s x 300 s = 1800 expected) within 5 standard deviations.
    hold = sum(420 <= t < 720 for t in times)
    assert abs(hold - 1800) < 5 * 1800**0.5
    burst = sum(720 <= t < 750 for t in times)
    assert abs(burst - 240) < 5 * 240**0.5
    total = len(times)
    assert abs(total - 1920 * 2) < 5 * (1920 * 2) ** 0.5


def test_the_oracle_runs_the_ceiling_of_the_demand_changing_exactly_where_it_crosses_an_integer() -> None:
    steps = oracle_schedule(standard_trace())
    assert steps == [
        (0.0, 0), (120.0, 1), (220.0, 2), (320.0, 3), (720.0, 4), (750.0, 3), (850.0, 2), (950.0, 1), (1050.0, 0),
    ]  # fmt: skip
    assert replicas_at(steps, 219.9) == 1
    assert replicas_at(steps, 220.0) == 2
    assert replicas_at(steps, 2000) == 0
    # 600 (up) + 900 (hold) + 120 (burst) + 600 (down) worker-seconds.
    assert replica_seconds(steps, 1350) == pytest.approx(2220)


def test_demand_exactly_at_a_workers_capacity_needs_that_many_workers() -> None:
    assert workers_for(3.0) == 3
    assert workers_for(3.0 + 1e-12) == 3  # float noise of a ramp
    assert workers_for(3.01) == 4
    assert workers_for(0.0) == 0
    flat = Trace((Phase("flat", 10, 2.5, 2.5),))
    assert oracle_schedule(flat) == [(0.0, 3)]


def test_replica_seconds_is_the_area_under_the_steps_clipped_to_the_window() -> None:
    steps = [(0.0, 0), (10.0, 2), (15.0, 1)]
    assert replica_seconds(steps, 20) == 2 * 5 + 1 * 5
    assert replica_seconds(steps, 12) == 2 * 2
    assert replica_seconds(steps, 20, begin=14) == 2 * 1 + 1 * 5
    assert replica_seconds([], 20) == 0
    # Samples become steps; a count that holds is one step, the first sample holds from 0.
    assert _steps([(0.02, 4), (0.04, 4), (3.0, 3)]) == [(0.0, 4), (3.0, 3)]
    assert replica_seconds(_steps([(0.02, 4), (0.04, 4)]), 10) == 40


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile([7.0], 0.99) == 7
    assert percentile([], 0.5) is None


def test_queue_wait_quantiles_count_the_requests_that_did_not_wait_as_zero() -> None:
    # 10 of 100 served requests waited: 5 up to 1 s, 5 more up to 2.5 s.
    buckets = [(0.5, 0.0), (1.0, 5.0), (2.5, 10.0), (float("inf"), 10.0)]
    assert wait_quantile(buckets, 100, 0.5) == 0.0
    assert wait_quantile(buckets, 100, 0.9) == 0.0
    # Rank 95 is the fifth waiting request: the top of the (0.5, 1] bucket.
    assert wait_quantile(buckets, 100, 0.95) == pytest.approx(1.0)
    # Rank 99 is the ninth: 4/5 of the way through (1, 2.5].
    assert wait_quantile(buckets, 100, 0.99) == pytest.approx(1.0 + 1.5 * 4 / 5)
    assert wait_quantile(buckets, 0, 0.5) is None
    assert wait_quantile([], 10, 0.99) == 0.0
    # Past the last finite bucket only its bound is known.
    assert wait_quantile([(1.0, 0.0), (float("inf"), 10.0)], 10, 0.99) == 1.0


def _raw(system: str, bill: list[tuple[float, int]], ttft: float, results: list[str]) -> dict[str, object]:
    return {
        "system": system,
        "outcomes": [
            {
                "at": 1.0 + i,
                "ttft_s": ttft if r == "ok" else None,
                "result": r,
                "detail": "" if r == "ok" else "503 x",
            }
            for i, r in enumerate(results)
        ],
        "bill": bill,
        "timeline": [],
        "decisions": [(1.0, "0 → 1")],
        "worker_starts": [{"started": 0.9, "start_s": 2.0}],
        "wait_buckets": [(1.0, 1.0), (float("inf"), 1.0)],
        "queue_refused": {},
    }


def test_the_summary_reports_uncompressed_seconds_and_judges_the_targets() -> None:
    trace = standard_trace().scaled(0.1)  # 135 s compressed
    raw = [
        _raw("elastic", [(0.0, 0), (12.0, 1), (42.0, 3), (105.0, 0)], 2.1, ["ok", "ok", "refused"]),
        _raw("oracle", [(0.0, 0), (12.0, 1), (22.0, 2), (32.0, 3), (72.0, 4), (75.0, 3), (85.0, 2), (95.0, 1), (105.0, 0)], 0.05, ["ok"] * 3),
        _raw("static-peak", [(0.0, 4)], 0.04, ["ok"] * 3),
    ]  # fmt: skip
    results = summarize({"compress": 10.0, "trace_scale": 1.0}, trace, 12.0, 0.8, raw)
    elastic = results["systems"]["elastic"]
    assert elastic["replica_seconds"] == {
        "s": pytest.approx(10 * (30 + 3 * 63)),
        "compressed_s": pytest.approx(219),
    }
    assert results["systems"]["static-peak"]["replica_seconds"]["s"] == pytest.approx(5400)
    assert results["systems"]["oracle"]["replica_seconds"]["s"] == pytest.approx(2220)
    assert results["oracle_schedule_replica_seconds"] == pytest.approx(2220)
    assert results["capacity_rps"] == {"per_s": 1.2, "compressed_per_s": 12.0}
    assert (elastic["ok"], elastic["refused"], elastic["failed"]) == (2, 1, 0)
    assert elastic["first_token_from_zero"]["s"] == pytest.approx(21.0)
    targets = results["targets"]["elastic"]
    assert not targets["zero_failed"]["met"]
    assert targets["vs_oracle"]["value"] == pytest.approx(2190 / 2220, abs=1e-3)
    assert targets["vs_oracle"]["met"]
    assert targets["vs_static_peak"]["met"]
    # 21 s to the first token against a 20 s start + 2 s.
    assert targets["first_token_from_zero"] == {"value": pytest.approx(21.0), "limit": 22.0, "met": True}
    table = render_markdown(results, "plot.png")
    assert "| elastic | ≤3 | 2,190 (219.0) | 0.41 |" in table
    assert "| elastic | zero_failed | 1 | 0 | NO |" in table
    assert "![replicas and TTFT over time](plot.png)" in table


def test_the_json_file_keeps_each_series_on_one_line_and_reads_back_the_same() -> None:
    trace = standard_trace().scaled(0.1)
    raw = [_raw("elastic", [(0.0, 0), (12.0, 1), (105.0, 0)], 2.1, ["ok"] * 50)]
    results = summarize({"compress": 10.0, "trace_scale": 1.0}, trace, 12.0, 0.8, raw)
    text = to_json(results)
    assert json.loads(text) == json.loads(json.dumps(results))
    assert text.count("\n") < 150  # 50 requests, but one line for the series
