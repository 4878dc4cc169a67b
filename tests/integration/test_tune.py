"""``vgate tune`` end to end on the simulator: real workers and gateway, a real grid, a report.

The grid has one configuration the engine refuses (too little memory for its KV cache): the
run must record it as infeasible with the engine's own words and carry on; a resumed run
must not repeat a trial; ``--report`` must rebuild the same table from the directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from vgate.tune.measure import Targets
from vgate.tune.runner import TrialPlan, serving
from vgate.tune.scenario import parse_sweep
from vgate_operator.spec import parse_spec

pytestmark = pytest.mark.timeout(240)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dry-run.yaml"


def _tune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vgate", "tune", *args], capture_output=True, text=True, timeout=200
    )


def test_a_small_tuning_on_the_simulator_ranks_reports_and_patches(tmp_path: Path) -> None:
    results = tmp_path / "run"
    args = [
        "-f", str(EXAMPLE), "--scenario", "D(64,24)", "--concurrency", "1,8", "--requests", "16",
        "--grid", "max-num-seqs=1,8", "--grid", "gpu-memory-utilization=0.05,0.9",
        "--tpot-p99-ms", "40", "--results", str(results),
        # Calibrated-looking timing, slowed so batching matters more than the machine's noise.
        "--worker-arg=--decode-step-s=0.004", "--worker-arg=--decode-batch-slope=0.05",
    ]  # fmt: skip
    done = _tune(*args)
    assert done.returncode == 0, done.stderr
    rows = json.loads((results / "report.json").read_text())["rows"]
    by_settings = {r["settings"]: r for r in rows}
    assert len(rows) == 5  # four grid points and the manifest's own settings
    # Too little memory: the engine's own reason, not a crash of the run.
    starved = by_settings["max-num-seqs=1,gpu-memory-utilization=0.05"]
    assert starved["status"] == "infeasible"
    assert "No available memory for the cache blocks" in starved["why"]
    # Batching eight sequences serves eight clients faster than one at a time.
    wide, narrow = (
        by_settings["max-num-seqs=8,gpu-memory-utilization=0.9"],
        by_settings["max-num-seqs=1,gpu-memory-utilization=0.9"],
    )
    assert wide["goodput"] > 2 * narrow["goodput"]
    assert rows[0]["status"] == "ok"
    assert rows[0]["config"].get("max-num-seqs", 64) > 1
    assert "| 1 |" in done.stdout
    assert "Winner:" in done.stdout
    for png in ("throughput-vs-ttft.png", "winner-latency.png"):
        assert (results / png).read_bytes().startswith(b"\x89PNG")
    patch = yaml.safe_load((results / "patch.yaml").read_text())
    parse_spec(patch["metadata"]["name"], patch["spec"])  # the operator accepts the winner

    # The same directory is not silently reused by a new run.
    reused = _tune(*args)
    assert reused.returncode == 2
    assert "already holds a run" in reused.stderr
    # A finished run resumes without repeating a trial, and its report is rebuilt from disk.
    trials = (results / "trials.jsonl").read_text()
    again = _tune("--resume", str(results))
    assert again.returncode == 0, again.stderr
    assert (results / "trials.jsonl").read_text() == trials
    rebuilt = _tune("--report", str(results))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.split("\n| 1 |")[1] == done.stdout.split("\n| 1 |")[1]
    assert (results / "trials.jsonl").read_text() == trials

    # New targets re-score the saved requests without a new trial: an impossible TPOT fails everyone.
    strict = _tune("--report", str(results), "--tpot-p99-ms", "0.001")
    assert strict.returncode == 1
    assert "No configuration met the targets" in strict.stdout
    assert "p99 TPOT" in strict.stdout
    assert len((results / "trials.jsonl").read_text().splitlines()) == len(trials.splitlines())


def test_bad_input_is_one_clear_line() -> None:
    for args, message in (
        (["--scenario", "D(100)", "--grid", "max-num-seqs=1"], "expected D(in,out)"),
        (["--grid", "max-num-seq=1"], "unknown setting 'max-num-seq'"),
        (["--grid", "max-num-seqs=1", "-f", "/nonexistent.yaml"], "/nonexistent.yaml"),
        (["--grid", "max-num-seqs=1", "--engine-cpus", "one"], "is not a CPU list such as 1, 0,2 or 2-3"),
        (
            ["--grid", "max-num-seqs=1", "--engine-cpus", "4096"],
            "CPU 4096 is not one this process may run on",
        ),
        (["--grid", "max-num-seqs=1", "--engine-cpus", "0", "--client-cpus", "0"], "share CPU 0"),
    ):
        done = _tune(*args)
        assert done.returncode == 2
        assert done.stderr.startswith("vgate tune: error: ")
        assert message in done.stderr


def test_the_calibration_recovers_a_simulated_engines_attention_costs(tmp_path: Path) -> None:
    # A simulator with CPU-like attention stands in for the engine: the probes must find its
    # quadratic prefill and context-bound decode again, not fold them into the linear terms.
    truth = {
        "decode-step-s": 0.004,
        "decode-batch-slope": 0.05,
        "prefill-attention-s": 2e-7,
        "decode-kv-s": 1e-6,
    }
    out = tmp_path / "profile.json"
    done = subprocess.run(
        [sys.executable, "-m", "vgate.tune.calibrate", "--engine", "sim", "--model", "sim", "--out", str(out),
         *[f"--worker-arg=--{k}={v}" for k, v in truth.items()]],
        capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    fitted = json.loads(out.read_text())["sim"]
    assert fitted["decode-step-s"] == pytest.approx(truth["decode-step-s"], rel=0.15)
    assert fitted["decode-kv-s"] == pytest.approx(truth["decode-kv-s"], rel=0.25)
    assert fitted["prefill-attention-s"] == pytest.approx(truth["prefill-attention-s"], rel=0.3)


def test_a_job_for_another_node_keeps_cpu_lists_this_machine_lacks() -> None:
    done = _tune("--render-job", "--grid", "max-num-seqs=1", "--engine-cpus", "4096", "--client-cpus", "0")
    assert done.returncode == 0, done.stderr
    assert "--engine-cpus 4096 --client-cpus 0" in done.stdout  # the Job's own start-up checks them there
    shared = _tune("--render-job", "--grid", "max-num-seqs=1", "--engine-cpus", "1-2", "--client-cpus", "2")
    assert shared.returncode == 2
    assert "share CPU 2" in shared.stderr


def _pids_with(*words: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and all(w.encode() in argv for w in words):
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="pinning apart needs two CPUs this process may use"
)
def test_a_pinned_trial_runs_the_engine_apart_from_the_gateway_and_the_load(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    engine, client = cpus[-1], cpus[0]
    plan = TrialPlan(
        engine="sim", model="sim", served_name="pinned-trial", sweep=parse_sweep("concurrency", "1"),
        shapes={}, targets=Targets(), objective="goodput", engine_cpus=str(engine), client_cpus=str(client),
    )  # fmt: skip
    before = os.sched_getaffinity(0)
    with serving(plan, {}, tmp_path) as (base, _):
        assert os.sched_getaffinity(0) == {client}  # the load generator runs in this process
        (worker,) = _pids_with("worker", "pinned-trial")
        (gateway,) = _pids_with("gateway", str(urlsplit(base).port))
        assert os.sched_getaffinity(worker) == {engine}
        assert os.sched_getaffinity(gateway) == {client}
    assert os.sched_getaffinity(0) == before
