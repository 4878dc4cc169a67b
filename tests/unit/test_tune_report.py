"""Scoring against targets, the search space, engine failure messages, reports and the Job, as data."""

from __future__ import annotations

import argparse
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from vgate.tune import report, space
from vgate.tune.job import render_job, tune_args
from vgate.tune.manifest import TuneTarget, load_target
from vgate.tune.measure import RequestRecord, Targets, percentile, score, summarise
from vgate.tune.runner import TrialResult, engine_message

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _records(n: int, ttft: float, e2e: float, tokens: int = 10, error_every: int = 0) -> list[RequestRecord]:
    return [
        RequestRecord(
            start=i * 0.1, ttft=ttft, e2e=e2e, prompt_tokens=5, output_tokens=tokens,
            error="500 boom" if error_every and i % error_every == 0 else None,
        )
        for i in range(n)
    ]  # fmt: skip


def test_percentiles_match_numpys_linear_interpolation() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(101)), 99) == 99
    assert percentile([], 99) is None


def test_a_level_meets_targets_only_when_every_p99_and_the_error_rate_do() -> None:
    records = _records(20, ttft=0.05, e2e=1.05, tokens=11)
    good = summarise(4, records, Targets(p99_ttft_s=0.1, p99_tpot_s=0.2, p99_e2e_s=2.0))
    assert good.meets
    assert good.tpot_p99 == pytest.approx(0.1)
    slow = summarise(4, records, Targets(p99_ttft_s=0.01))
    assert not slow.meets
    assert slow.misses == ("p99 TTFT 50 ms > 10 ms",)
    failing = summarise(4, _records(20, 0.05, 1.0, error_every=5), Targets())
    assert not failing.meets
    assert failing.errors == 4
    assert failing.first_error == "500 boom"
    assert summarise(4, _records(20, 0.05, 1.0, error_every=5), Targets(max_error_rate=0.25)).meets


def test_goodput_is_the_heaviest_level_meeting_the_targets() -> None:
    targets = Targets(p99_e2e_s=1.5)
    light = summarise(1, _records(10, 0.05, 1.0), targets)
    heavy = summarise(8, _records(10, 0.05, 3.0), targets)
    assert score([light, heavy], "goodput", targets) == light.request_rate  # heavy is slower, too
    assert score([heavy], "throughput", targets) == 0.0


def test_goodput_reaches_past_the_last_level_met_to_where_the_missed_p99_meets_its_budget() -> None:
    targets = Targets(p99_e2e_s=1.5)
    light = summarise(1, _records(10, 0.05, 1.0), targets)
    heavy = summarise(8, _records(40, 0.05, 2.0), targets)  # p99 E2E 2 s: the budget is half-way from 1 s
    assert light.meets
    assert not heavy.meets
    assert heavy.request_rate > light.request_rate
    halfway = light.request_rate + 0.5 * (heavy.request_rate - light.request_rate)
    assert score([heavy, light], "goodput", targets) == pytest.approx(halfway)
    tokens = light.output_tps + 0.5 * (heavy.output_tps - light.output_tps)
    assert score([light, heavy], "throughput", targets) == pytest.approx(tokens)
    # Two p99s missed: the first to reach its budget bounds the reach (TTFT 0.05 -> 0.45 s, budget 0.15).
    both = Targets(p99_e2e_s=1.5, p99_ttft_s=0.15)
    late = summarise(8, _records(40, 0.45, 2.0), both)
    quarter = light.request_rate + 0.25 * (late.request_rate - light.request_rate)
    assert score([summarise(1, _records(10, 0.05, 1.0), both), late], "goodput", both) == pytest.approx(
        quarter
    )
    # Missed on errors: nothing past the level that met.
    failing = summarise(8, _records(40, 0.05, 2.0, error_every=5), targets)
    assert score([light, failing], "goodput", targets) == light.request_rate


def test_grid_parsing_checks_names_and_ranges() -> None:
    grid = space.parse_grid(["max-num-seqs=8,32,8", "--enable-chunked-prefill=true,false"])
    assert grid == {"max-num-seqs": (8, 32), "enable-chunked-prefill": (True, False)}
    assert len(space.expand(grid)) == 4
    for bad, why in (
        (["max_num_seqs=8"], "unknown setting"),
        (["max-num-seqs=0"], "within"),
        (["gpu-memory-utilization=1.5"], "within"),
        (["kv-cache-dtype=int4"], "one of"),
        (["max-num-seqs"], "NAME=V1"),
        ([], "at least one"),
    ):
        with pytest.raises(space.SpaceError, match=why):
            space.parse_grid(bad)


def test_a_configuration_becomes_worker_flags_and_cr_fields() -> None:
    config = {"max-num-seqs": 16, "enable-prefix-caching": False, "kv-cache-memory-bytes": 1 << 30}
    argv = space.worker_args(config)
    assert argv == [
        "--max-num-seqs",
        "16",
        "--no-enable-prefix-caching",
        "--kv-cache-memory-bytes",
        str(1 << 30),
    ]
    assert space.cr_fields(config) == {"maxNumSeqs": 16, "enablePrefixCaching": False}


def test_the_engines_own_reason_is_picked_from_its_log() -> None:
    vllm_log = (
        "INFO 12-07 03:10:00 [api_server.py:1] vLLM API server version 0.32.0\n"
        "(EngineCore pid=4242) ERROR 12-07 03:10:05 [core.py:9] EngineCore failed to start.\n"
        "(EngineCore pid=4242) ValueError: max_num_batched_tokens (64) is smaller than max_model_len (512).\n"
        "INFO 12-07 03:10:06 [launcher.py:1] Shutting down\n"
    )
    assert engine_message(vllm_log).startswith("ValueError: max_num_batched_tokens (64)")
    sim_log = "vgate worker --dry-run: invalid settings: No available memory for the cache blocks.\n"
    assert "No available memory" in engine_message(sim_log)
    assert engine_message("") == "the worker exited without a message"


def _trial(index: int, config: dict[str, space.Value], e2e: float, status: str = "ok") -> TrialResult:
    targets = Targets(p99_e2e_s=1.5)
    levels = (
        [summarise(lv, _records(12, 0.05 * lv, e2e * lv), targets) for lv in (1, 4)] if status == "ok" else []
    )
    trial = TrialResult(index, config, status, "ValueError: no memory" if status != "ok" else "", levels)  # type: ignore[arg-type]
    trial.score = score(levels, "goodput", targets)
    return trial


def test_report_ranks_feasible_first_and_says_why_others_lost(tmp_path: Path) -> None:
    trials = [
        _trial(0, {"max-num-seqs": 4}, 1.0),
        _trial(1, {"max-num-seqs": 8}, 0.3),
        _trial(2, {"max-num-seqs": 64}, 0, status="infeasible"),
        _trial(-1, {}, 2.0),
    ]
    rows = report.table_rows(trials)
    assert [r["trial"] for r in rows] == [1, 0, -1, 2]
    assert [r["goodput"] for r in rows] == [t.score for t in report.ranked(trials)]
    assert rows[0]["why"] == "meets targets"
    assert rows[2]["why"].startswith("p99 E2E")
    assert rows[3]["status"] == "infeasible"
    assert "no memory" in rows[3]["why"]
    run = {"scenario": "D(1,1)", "sweep_kind": "concurrency", "levels": [1, 4], "targets_text": "x",
           "objective": "goodput", "engine": "sim", "strategy": "grid"}  # fmt: skip
    text = report.write_report(tmp_path, run, trials)
    assert "| 1 | max-num-seqs=8 |" in text
    assert "infeasible: ValueError" in text
    for png in (report.PARETO_PNG, report.WINNER_PNG):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG")


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(100.0, 0.5), (200.0, 0.8), (150.0, 0.9), (50.0, 0.2)]
    assert report.pareto(points) == [0, 1, 3]


def test_the_winners_patch_changes_only_its_model(tmp_path: Path) -> None:
    target = load_target(str(EXAMPLES / "dry-run.yaml"), None, None, None)
    assert target.manifest is not None
    assert "--max-num-seqs" in target.worker_args
    patched = report.manifest_patch(
        target.manifest, target.served_name, {"max-num-seqs": 12, "kv-cache-dtype": "fp8"}
    )
    models = {m["name"]: m for m in patched["spec"]["models"]}
    assert models[target.served_name]["maxNumSeqs"] == 12
    assert models[target.served_name]["kvCacheDtype"] == "fp8"
    assert target.manifest["spec"]["models"][0].get("maxNumSeqs") != 12  # the original is untouched
    from vgate_operator.spec import parse_spec

    parse_spec(patched["metadata"]["name"], patched["spec"])  # the operator accepts it
    sized = report.manifest_patch(target.manifest, target.served_name, {"kv-cache-memory-bytes": 1 << 30})
    assert sized["spec"]["models"][0]["engineArgs"] == ["--kv-cache-memory-bytes", str(1 << 30)]
    bare = report.manifest_patch(None, "Qwen/Qwen2.5-1.5B-Instruct-AWQ", {"max-num-seqs": 8})
    assert bare["spec"]["models"] == [
        {"name": "qwen2-5-1-5b-instruct-awq", "model": "Qwen/Qwen2.5-1.5B-Instruct-AWQ", "maxNumSeqs": 8}
    ]


def test_render_job_is_a_valid_kubernetes_job() -> None:
    argv = [
        "-f",
        str(EXAMPLES / "dry-run.yaml"),
        "--scenario",
        "D(100,100)",
        "--render-job",
        "--namespace",
        "ml",
    ]
    args = argparse.Namespace(filename=argv[1], image=None, namespace="ml", results_claim="tune-results")
    target = TuneTarget("sim", "m", "chat")
    docs = render_job(argv, target, args)
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    configmap, job = docs
    assert yaml.safe_load(configmap["data"]["manifest.yaml"])["kind"] == "VGateDeployment"
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert script.startswith("vgate tune -f /etc/vgate-tune/manifest.yaml --scenario 'D(100,100)'")
    assert "--render-job" not in script
    assert "--results /results/vgate-tune-" in script
    assert tune_args(argv) == ["--scenario", "D(100,100)"]


def test_every_setting_the_tuner_patches_is_a_field_the_resource_carries() -> None:
    from vgate_operator.spec import ModelSpec

    carried = {field.alias or name for name, field in ModelSpec.model_fields.items()}
    assert {p.cr_field for p in space.PARAMS.values() if p.cr_field} <= carried
    config = {"long-prefill-token-threshold": 64}
    assert space.worker_args(config) == ["--long-prefill-token-threshold", "64"]
    assert space.cr_fields(config) == {"longPrefillTokenThreshold": 64}
