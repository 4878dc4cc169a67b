"""Spec validation: what the operator accepts, its defaults, and the reasons it rejects."""

from __future__ import annotations

from typing import Any

import pytest

from vgate_operator.spec import DEFAULT_MODEL, InvalidSpecError, deprecations, gpus_for, parse_spec


def test_defaults_fill_a_minimal_spec() -> None:
    spec = parse_spec("demo", {"models": [{"name": "chat"}]})
    model = spec.models[0]
    assert model.model == DEFAULT_MODEL
    assert model.quantization == "auto"  # vLLM reads the checkpoint's method, awq_marlin where it can
    assert model.replicas == 1
    assert gpus_for(model, spec.worker) == 1
    assert spec.gateway.routing == "prefix-aware"
    assert spec.ingress.enabled is False


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"models": [{"name": "a", "quantization": "fp8"}]}, "'fp8' contradicts AWQ model"),
        ({"models": [{"name": "a", "model": "TheBloke/x-GPTQ", "quantization": "awq"}]}, "contradicts GPTQ"),
        ({"models": [{"name": "a", "quantization": "none"}]}, "'none' contradicts AWQ model"),
        (
            {"models": [{"name": "a", "model": "Qwen/Qwen2.5-1.5B-Instruct", "quantization": "awq"}]},
            "quantization 'awq' needs a checkpoint quantized with AWQ, but model 'Qwen/Qwen2.5-1.5B-Instruct' is not one",
        ),
        (
            {"models": [{"name": "a", "model": "Qwen/Qwen2.5-1.5B-Instruct", "quantization": "gptq"}]},
            "needs a checkpoint quantized with GPTQ",
        ),
        ({"models": [{"name": "a"}, {"name": "a"}]}, "duplicate model name"),
        (
            {"models": [{"name": "a", "resources": {"gpus": 1}}], "worker": {"dryRun": True}},
            "resources.gpus cannot be set with worker.dryRun",
        ),
        ({"models": [{"name": "Bad_Name"}]}, "models.0.name"),
        ({"models": []}, "models"),
        ({"models": [{"name": "a", "replicas": -1}]}, "replicas"),
        ({"models": [{"name": "a", "quantization": "int3"}]}, "quantization"),
        ({"models": [{"name": "a"}], "gateway": {"routing": "random"}}, "gateway.routing"),
        ({"models": [{"name": "a"}], "gatewy": {}}, "gatewy"),
        (
            {"models": [{"name": "a"}], "ingress": {"enabled": True, "tls": {"secretName": "s"}}},
            "tls needs a host",
        ),
        (
            {"models": [{"name": "a"}], "gateway": {"processes": 4, "workers": 2}},
            "gateway.processes (4) and its deprecated name gateway.workers (2) disagree",
        ),
    ],
)
def test_invalid_specs_are_rejected_with_a_reason(spec: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec("demo", spec)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("model", "quantization"),
    [
        ("Qwen/Qwen2.5-1.5B-Instruct-AWQ", "auto"),
        ("Qwen/Qwen2.5-1.5B-Instruct-AWQ", "awq_marlin"),
        ("Qwen/Qwen2.5-1.5B-Instruct", "auto"),
        ("Qwen/Qwen2.5-1.5B-Instruct", "fp8"),  # vLLM quantizes to fp8 on the fly
        ("Qwen/Qwen2.5-1.5B-Instruct", "none"),
        ("/models/my-checkpoint", "awq"),  # a local path can hold anything: the worker checks
    ],
)
def test_quantizations_that_fit_the_model_are_accepted(model: str, quantization: str) -> None:
    parse_spec("demo", {"models": [{"name": "a", "model": model, "quantization": quantization}]})


def test_child_names_must_fit_kubernetes_limits() -> None:
    long_name = "x" * 30
    with pytest.raises(InvalidSpecError, match="exceeds 63 characters"):
        parse_spec(long_name, {"models": [{"name": "m" * 30}]})
    with pytest.raises(InvalidSpecError, match="must be a DNS label"):
        parse_spec("9lives", {"models": [{"name": "a"}]})


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec("demo", {"models": [{"name": "a", "quantization": "gptq"}, {"name": "a"}]})
    assert "contradicts AWQ" in str(info.value)
    assert "duplicate" in str(info.value)


def test_awq_variants_and_unquantized_models_are_accepted() -> None:
    parse_spec("demo", {"models": [{"name": "a", "quantization": "awq_marlin"}]})
    parse_spec(
        "demo", {"models": [{"name": "b", "model": "Qwen/Qwen2.5-1.5B-Instruct", "quantization": "none"}]}
    )
    spec = parse_spec("demo", {"models": [{"name": "c"}], "worker": {"dryRun": True}})
    assert gpus_for(spec.models[0], spec.worker) == 0


def test_the_old_name_of_gateway_processes_works_and_says_it_is_deprecated() -> None:
    new = parse_spec("demo", {"models": [{"name": "a"}], "gateway": {"processes": 3}})
    assert (new.gateway.processes, deprecations("demo", new)) == (3, [])
    old = parse_spec("demo", {"models": [{"name": "a"}], "gateway": {"workers": 3}})
    assert old.gateway.processes == 3
    (warning,) = deprecations("demo", old)
    assert "gateway.workers is deprecated" in warning
    assert "set gateway.processes: 3" in warning
    assert "kubectl patch vgd demo" in warning
