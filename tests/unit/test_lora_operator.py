"""LoRA adapters in the VGateDeployment: checks, worker flags, the gateway's configuration, status."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from vgate_gateway.settings import GatewaySettings
from vgate_operator.builders import Owner, build_all
from vgate_operator.spec import InvalidSpecError, parse_spec
from vgate_operator.status import adapter_status
from vgate_worker.launcher import build_vllm_argv
from vgate_worker.settings import WorkerSettings

OWNER = Owner(name="demo", namespace="llm", uid="2f1c6c1e-0000-4000-8000-000000000002")


def spec(dry_run: bool = False, **model: Any) -> dict[str, Any]:
    return {
        "worker": {"dryRun": dry_run},
        "models": [
            {
                "name": "qwen",
                "maxLoras": 2,
                "maxLoraRank": 32,
                "adapters": [{"name": "sql", "source": "/models/adapters/sql", "minWorkers": 1}],
                **model,
            }
        ],
    }


def objects(raw: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in build_all(OWNER, parse_spec(OWNER.name, raw))}


@pytest.mark.parametrize("dry_run", [False, True])
def test_adding_or_removing_an_adapter_leaves_the_worker_pods_alone(dry_run: bool) -> None:
    before = objects(spec(dry_run))
    more = spec(dry_run)
    more["models"][0]["adapters"].append({"name": "poet", "source": "org/poet-lora"})
    after = objects(more)
    none = copy.deepcopy(more)
    none["models"][0]["adapters"] = []
    emptied = objects(none)
    key = ("Deployment", "demo-worker-qwen")
    template = before[key]["spec"]["template"]
    assert after[key]["spec"]["template"] == template
    assert emptied[key]["spec"]["template"] == template
    config = yaml.safe_load(after[("ConfigMap", "demo-gateway")]["data"]["gateway.yaml"])
    settings = GatewaySettings.model_validate(config)
    assert settings.adapters["poet"].base == "qwen"
    assert settings.adapters["sql"].min_workers == 1
    assert settings.for_model("qwen").max_loras == 2


def test_workers_start_with_lora_enabled_and_its_sizes() -> None:
    container = objects(spec())[("Deployment", "demo-worker-qwen")]["spec"]["template"]["spec"]["containers"][
        0
    ]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    argv = build_vllm_argv(
        WorkerSettings(
            **{
                k.removeprefix("VGATE_WORKER_").lower(): v
                for k, v in env.items()
                if k.startswith("VGATE_WORKER_")
            }
        )
    )
    i = argv.index("--enable-lora")
    assert argv[i : i + 5] == ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "32"]
    dry = objects(spec(True))[("Deployment", "demo-worker-qwen")]["spec"]["template"]["spec"]["containers"][0]
    assert dry["args"][-5:] == ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "32"]
    assert dry["env"] == [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"maxLoras": None}, "adapters need maxLoras"),
        (
            {"adapters": [{"name": "qwen", "source": "org/x"}]},
            "'qwen' of model 'qwen' has the name of a model",
        ),
        (
            {"adapters": [{"name": "a", "source": "org/a"}, {"name": "a", "source": "org/b"}]},
            "'a': duplicate adapter name",
        ),
        ({"adapters": [{"name": "big", "source": "org/big", "rank": 64}]}, "rank 64, above maxLoraRank 32"),
        (
            {"adapters": [{"name": n, "source": f"org/{n}", "minWorkers": 1} for n in "abc"]},
            "3 adapters have minWorkers > 0 (a, b, c) but a worker has 2 adapter slots",
        ),
        ({"maxCpuLoras": 1}, "maxCpuLoras (1) must be at least maxLoras"),
    ],
)
def test_bad_adapters_are_an_invalid_spec_with_the_reason(change: dict[str, Any], reason: str) -> None:
    raw = spec()
    raw["models"][0].update(change)
    raw["models"][0] = {k: v for k, v in raw["models"][0].items() if v is not None}
    with pytest.raises(InvalidSpecError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_spec("demo", raw)


def test_status_counts_the_workers_each_adapter_is_loaded_on() -> None:
    parsed = parse_spec("demo", spec())
    fresh = {"sql": {"loaded_on": []}}  # a gateway that has not seen the load yet
    stats = {"sql": {"loaded_on": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]}}
    assert adapter_status(parsed, [fresh, stats]) == [
        {"name": "sql", "model": "qwen", "minWorkers": 1, "loadedWorkers": 2}
    ]
    assert adapter_status(parsed, None) == [{"name": "sql", "model": "qwen", "minWorkers": 1}]
