"""``make bench`` (bench/efficiency.py) end to end, shrunk to a few seconds of load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.efficiency", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=110,
    )


def test_bench_reports_routing_dedup_cache_and_batching(tmp_path: Path) -> None:
    out = tmp_path / "results"
    small = ["--requests", "24", "--concurrency", "4", "--apps", "2", "--system-tokens", "300"]
    done = _bench(
        "--workers", "2", "--strategies", "round-robin,prefix-aware", "--identical", "10", *small,
        "--speed", "1", "--limiter-requests", "0", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "prefix-aware" in done.stdout
    assert "10 identical concurrent requests -> 1 upstream call(s)" in done.stdout
    [path] = out.glob("bench-*.json")
    results = json.loads(path.read_text())
    routing = results["routing"]["2"]
    assert set(routing) == {"round-robin", "prefix-aware"}
    for run in routing.values():
        assert 0 <= run["prefix_hit_rate"] <= 1
        assert 0 < run["ttft_mean_s"] <= run["ttft_p99_s"]
        assert sum(run["requests_per_worker"]) == 24
    assert results["dedup"]["upstream_calls"] == 1
    assert results["dedup"]["distinct_answers"] == 1
    assert results["cache"]["headers"] == ["hit:hit", "miss:miss"]
    assert results["batching"]["upstream_calls"] < results["batching"]["client_requests"]


def test_bench_compares_no_limiter_in_process_and_redis_limits(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = _bench(
        "--only-limiter", "--limiter-requests", "16", "--limiter-rounds", "1", "--concurrency", "4",
        "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Redis round trip per request" in done.stdout
    [path] = out.glob("bench-*.json")
    limiter = json.loads(path.read_text())["limiter"]
    assert set(limiter["variants"]) == {"none", "in-process", "redis"}
    assert limiter["variants"]["none"]["admit_mean_s"] == 0  # no limits: no decision taken
    for name in ("in-process", "redis"):
        assert limiter["variants"][name]["admit_mean_s"] > 0
    assert limiter["redis_round_trip_cost_s"] == limiter["variants"]["redis"]["admit_mean_s"]


def test_bench_rejects_unknown_strategies(tmp_path: Path) -> None:
    done = _bench("--strategies", "round-robin,fastest", cwd=tmp_path)
    assert done.returncode == 2
    assert "fastest" in done.stderr
