"""The workload language: genai-bench's scenarios, prompts files and load sweeps, as data."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from vgate.tune.scenario import (
    Deterministic,
    Normal,
    Prompts,
    ScenarioError,
    Uniform,
    parse_scenario,
    parse_sweep,
    requests_for,
    sample,
)


def test_deterministic_scenario_sends_exact_lengths() -> None:
    scenario = parse_scenario("D(100,100)")
    assert scenario == Deterministic(100, 100)
    assert {(s.prompt_tokens, s.output_tokens) for s in sample(scenario, 20, seed=1)} == {(100, 100)}


def test_normal_scenario_has_the_asked_mean_and_spread() -> None:
    scenario = parse_scenario("N(480,240)/(300,150)")
    assert scenario == Normal(480, 240, 300, 150)
    shapes = sample(scenario, 4000, seed=7)
    prompts = [s.prompt_tokens for s in shapes]
    outputs = [s.output_tokens for s in shapes]
    assert statistics.mean(prompts) == pytest.approx(480, rel=0.05)
    assert statistics.stdev(outputs) == pytest.approx(150, rel=0.1)
    assert min(prompts) >= 1
    assert min(outputs) >= 1


def test_uniform_scenario_stays_within_its_ranges() -> None:
    shapes = sample(parse_scenario("U(10,20)/(5,6)"), 500, seed=3)
    assert parse_scenario("u(10,20)/(5,6)") == Uniform(10, 20, 5, 6)
    assert {s.prompt_tokens for s in shapes} == set(range(10, 21))
    assert {s.output_tokens for s in shapes} == {5, 6}


def test_same_seed_same_requests_for_every_configuration() -> None:
    scenario = parse_scenario("N(100,30)/(50,10)")
    assert sample(scenario, 50, seed=5) == sample(scenario, 50, seed=5)
    assert sample(scenario, 50, seed=5) != sample(scenario, 50, seed=6)


@pytest.mark.parametrize(
    "text",
    ["D(100)", "X(1,2)", "D(0,10)", "D(1.5,10)", "N(10,2)", "N(0,1)/(10,1)", "U(20,10)/(1,2)", "D(a,b)", ""],
)
def test_malformed_scenarios_are_refused_with_the_forms(text: str) -> None:
    with pytest.raises(ScenarioError, match=r"D\(in,out\)|whole numbers|means must|min <= max"):
        parse_scenario(text)


def test_prompts_file_replays_real_prompts(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "hello there", "output_tokens": 7}, {"prompt": "one two three"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    scenario = parse_scenario(str(path))
    assert isinstance(scenario, Prompts)
    drawn = sample(scenario, 30, seed=0)
    assert {s.prompt for s in drawn} == {"hello there", "one two three"}
    assert {s.output_tokens for s in drawn} == {7, 128}


def test_prompts_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(ScenarioError, match=r"bad.jsonl:2"):
        parse_scenario(str(path))
    with pytest.raises(ScenarioError, match="prompts file"):
        parse_scenario(str(tmp_path / "missing.jsonl"))


def test_sweeps_are_sorted_and_checked() -> None:
    assert parse_sweep("concurrency", "4,1,4").levels == (1, 4)
    assert parse_sweep("rate", "0.5,2").levels == (0.5, 2)
    for kind, text in (("concurrency", "1.5"), ("rate", "0"), ("rate", "a"), ("concurrency", "")):
        with pytest.raises(ScenarioError):
            parse_sweep(kind, text)  # type: ignore[arg-type]


def test_each_client_sends_several_requests() -> None:
    sweep = parse_sweep("concurrency", "1,16")
    assert requests_for(sweep, 1, 24) == 24
    assert requests_for(sweep, 16, 24) == 64
