"""``make bench-fleet`` (bench/fleet.py) end to end, the trace shrunk to a few seconds a system."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(240)


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.fleet", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=230,
    )


def test_bench_fleet_bills_serves_and_plots_every_system(tmp_path: Path) -> None:
    out = tmp_path / "results"
    # 1350 s x 0.5 / 50: about 14 s a system; a slow simulated GPU keeps the request rate small.
    done = _bench(
        "--compress", "50", "--trace-scale", "0.5", "--decode-step-s", "1", "--calibrate", "150",
        "--systems", "elastic,oracle,static-peak", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    [path] = out.glob("fleet-*.json")
    assert path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    table = path.with_suffix(".md").read_text()
    assert "| static-peak | ≤4 |" in table
    assert table in done.stdout
    results = json.loads(path.read_text())
    systems = results["systems"]
    seconds = results["trace"]["seconds"]
    assert seconds == pytest.approx(675)
    # The same arrivals for every system, all of them streamed to the end by the always-ready fleet.
    assert len({s["requests"] for s in systems.values()}) == 1
    peak = systems["static-peak"]
    assert peak["requests"] > 20
    assert (peak["ok"], peak["refused"], peak["failed"]) == (peak["requests"], 0, 0)
    assert peak["replica_seconds"]["s"] == pytest.approx(4 * seconds, rel=0.02)
    # The oracle's bill is its schedule's (up to the control loop's 20 ms steps).
    assert systems["oracle"]["replica_seconds"]["s"] == pytest.approx(
        results["oracle_schedule_replica_seconds"], rel=0.05
    )
    assert systems["oracle"]["max_replicas"] == 4
    elastic = systems["elastic"]
    # It starts at zero, the first request wakes it, and its first worker's start is measured.
    assert elastic["bill_steps"][0][1] == 0
    assert elastic["max_replicas"] >= 1
    assert elastic["worker_starts"]
    assert elastic["first_token_from_zero"]["s"] >= elastic["first_worker_start"]["s"]
    assert any("scale from zero" in text for _, text in elastic["decisions"])
    assert elastic["ok"] > 0
    assert 0 < elastic["replica_seconds"]["s"] < peak["replica_seconds"]["s"]
    assert set(results["targets"]["elastic"]) == {
        "zero_failed",
        "vs_oracle",
        "vs_static_peak",
        "first_token_from_zero",
    }


def test_bench_fleet_rejects_unknown_systems(tmp_path: Path) -> None:
    done = _bench("--systems", "elastic,autopilot", cwd=tmp_path)
    assert done.returncode == 2
    assert "autopilot" in done.stderr
