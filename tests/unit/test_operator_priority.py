"""The engine's scheduling policy and the gateway's queue policy, from the VGateDeployment spec."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_operator_builders import DRY_SPEC, GPU_SPEC, OWNER, container, env_of, objects
from vgate_gateway.settings import load_settings
from vgate_operator.spec import InvalidSpecError, parse_spec
from vgate_worker.launcher import build_vllm_argv
from vgate_worker.settings import WorkerSettings
from vgate_worker.sim.settings import settings_from_argv


def _with(
    spec: dict[str, Any], model: dict[str, Any], gateway: dict[str, Any] | None = None
) -> dict[str, Any]:
    raw = copy.deepcopy(spec)
    raw["models"][0].update(model)
    raw.setdefault("gateway", {}).update(gateway or {})
    return raw


def _gateway_settings(raw: dict[str, Any], tmp_path: Path) -> Any:
    config = objects(raw)[("ConfigMap", "demo-gateway")]
    path = tmp_path / "gateway.yaml"
    path.write_text(config["data"]["gateway.yaml"])
    return load_settings(config=path)


def test_the_priority_policy_reaches_vllm_and_turns_on_engine_priority_in_the_gateway(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    raw = _with(GPU_SPEC, {"schedulingPolicy": "priority"})
    env = env_of(container(objects(raw)[("Deployment", "demo-worker-qwen")]))
    for name, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    argv = build_vllm_argv(WorkerSettings())
    assert argv[argv.index("--scheduling-policy") + 1] == "priority"
    assert _gateway_settings(raw, tmp_path).for_model("qwen").engine_priority is True


def test_fcfs_by_default_adds_no_flag_and_no_engine_priority(tmp_path: Path) -> None:
    env = env_of(container(objects(GPU_SPEC)[("Deployment", "demo-worker-qwen")]))
    assert "VGATE_WORKER_SCHEDULING_POLICY" not in env
    assert _gateway_settings(GPU_SPEC, tmp_path).for_model("qwen").engine_priority is False


def test_the_simulator_gets_the_policy_too() -> None:
    raw = _with(DRY_SPEC, {"schedulingPolicy": "priority"})
    args = container(objects(raw)[("Deployment", "demo-worker-sim")])["args"]
    assert settings_from_argv(args[2:]).scheduling_policy == "priority"


@pytest.mark.parametrize("policy", ["fair", "fifo"])
def test_the_queue_policy_reaches_the_gateway(policy: str, tmp_path: Path) -> None:
    raw = _with(GPU_SPEC, {}, {"queuePolicy": policy})
    assert _gateway_settings(raw, tmp_path).queue_policy == policy


@pytest.mark.parametrize(
    ("model", "gateway", "field"),
    [({"schedulingPolicy": "lifo"}, {}, "schedulingPolicy"), ({}, {"queuePolicy": "random"}, "queuePolicy")],
)
def test_an_unknown_policy_is_an_invalid_spec(
    model: dict[str, Any], gateway: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidSpecError, match=field):
        parse_spec(OWNER.name, _with(GPU_SPEC, model, gateway))


def test_the_long_prefill_cap_reaches_vllm_and_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _with(GPU_SPEC, {"longPrefillTokenThreshold": 64})
    env = env_of(container(objects(raw)[("Deployment", "demo-worker-qwen")]))
    for name, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    argv = build_vllm_argv(WorkerSettings())
    assert argv[argv.index("--long-prefill-token-threshold") + 1] == "64"
    sim = container(
        objects(_with(DRY_SPEC, {"longPrefillTokenThreshold": 64}))[("Deployment", "demo-worker-sim")]
    )
    assert settings_from_argv(sim["args"][2:]).long_prefill_token_threshold == 64
    assert "VGATE_WORKER_LONG_PREFILL_TOKEN_THRESHOLD" not in env_of(
        container(objects(GPU_SPEC)[("Deployment", "demo-worker-qwen")])
    )


@pytest.mark.parametrize("value", [0, 100_000])
def test_a_long_prefill_cap_out_of_range_is_an_invalid_spec(value: int) -> None:
    with pytest.raises(InvalidSpecError, match="longPrefillTokenThreshold"):
        parse_spec(OWNER.name, _with(GPU_SPEC, {"longPrefillTokenThreshold": value}))
