"""The autoscaling spec: defaults, every check, and what the builders make of it."""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from vgate_gateway.settings import GatewaySettings
from vgate_operator.autoscale.checks import autoscaling_problems
from vgate_operator.autoscale.policy import PolicySettings
from vgate_operator.builders import Owner, build_all
from vgate_operator.builders.gateway import gateway_settings
from vgate_operator.spec import InvalidSpecError, parse_spec
from vgate_operator.status import healthy_status

ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner(name="demo", namespace="llm", uid="u1")
KEDA = {"prometheusAddress": "http://prometheus-operated.monitoring.svc:9090"}


def spec(autoscaling: dict[str, Any] | None = None, **model: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"name": "qwen", "maxNumSeqs": 64, **model}
    if autoscaling is not None:
        m["autoscaling"] = autoscaling
    return {"models": [m], "gateway": {"replicas": 3}, "worker": {"dryRun": True}}


def built(raw: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in build_all(OWNER, parse_spec(OWNER.name, raw))}


def problems(autoscaling: dict[str, Any], **model: Any) -> list[str]:
    return autoscaling_problems(parse_spec(OWNER.name, spec(autoscaling, **model)))


def test_defaults_follow_the_documented_choices() -> None:
    parsed = parse_spec(OWNER.name, spec({"maxReplicas": 4}))
    auto = parsed.models[0].autoscaling
    assert auto is not None
    cfg = PolicySettings.from_spec(auto, parsed.models[0].max_num_seqs)
    assert (cfg.min_replicas, cfg.max_replicas, cfg.target_per_replica) == (1, 4, 64)
    assert (cfg.stable_window_s, cfg.panic_window_s, cfg.panic_threshold) == (60, 6, 2)
    assert (cfg.scale_down_delay_s, cfg.scale_to_zero_delay_s) == (300, 600)
    assert auto.engine == "builtin"
    assert (parsed.models[0].queue.max_requests, parsed.models[0].queue.timeout_seconds) == (1000, 300)
    assert autoscaling_problems(parsed) == []


@pytest.mark.parametrize(
    ("autoscaling", "message"),
    [
        ({"minReplicas": 5, "maxReplicas": 2}, "minReplicas (5) exceeds maxReplicas (2)"),
        ({}, "maxReplicas is required"),
        ({"maxReplicas": 2, "minReplicas": -1}, "minReplicas must be >= 0"),
        ({"maxReplicas": 2, "scaleDownDelaySeconds": -5}, "scaleDownDelaySeconds must be a finite number"),
        ({"maxReplicas": 2, "scaleToZeroDelaySeconds": -1}, "scaleToZeroDelaySeconds must be"),
        ({"maxReplicas": 2, "stableWindowSeconds": -1}, "stableWindowSeconds must be"),
        ({"maxReplicas": 2, "panicWindowSeconds": 90}, "panicWindowSeconds (90) must not exceed"),
        ({"maxReplicas": 2, "panicThreshold": 0.5}, "panicThreshold must be a ratio >= 1"),
        ({"maxReplicas": 2, "targetPerReplica": 0}, "targetPerReplica must be > 0"),
        ({"maxReplicas": 2, "engine": "keda"}, "engine keda needs keda.prometheusAddress"),
        (
            {"maxReplicas": 2, "engine": "keda", "keda": {"prometheusAddress": "prometheus:9090"}},
            "must be an http:// or https:// URL",
        ),
        (
            {"maxReplicas": 2, "engine": "keda", "keda": KEDA, "scaleDownDelaySeconds": 7200},
            "at most 3600 with engine keda",
        ),
        ({"maxReplicas": 2, "keda": KEDA}, "keda is set but engine is builtin"),
    ],
)
def test_bad_autoscaling_is_named(autoscaling: dict[str, Any], message: str) -> None:
    found = problems(autoscaling)
    assert any(message in p and p.startswith("models[0] (qwen).autoscaling") for p in found), found


def test_bad_queue_settings_are_named() -> None:
    found = problems({"maxReplicas": 2}, queue={"maxRequests": -1, "timeoutSeconds": 0})
    assert any("queue: maxRequests must be >= 0" in p for p in found)
    assert any("queue: timeoutSeconds must be > 0" in p for p in found)


def test_a_bad_block_is_reported_in_ready_while_everything_is_still_built() -> None:
    raw = spec({"minReplicas": 5, "maxReplicas": 2})
    objs = built(raw)
    assert ("Deployment", "demo-worker-qwen") in objs  # the rest is reconciled
    assert "replicas" not in objs[("Deployment", "demo-worker-qwen")]["spec"]  # and the count held
    live = {k: {"spec": {"replicas": 3}, "status": {}} for k in objs if k[0] == "Deployment"}
    status = healthy_status(OWNER, parse_spec(OWNER.name, raw), 1, live)
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "InvalidSpec")
    assert "minReplicas (5) exceeds maxReplicas (2)" in ready["message"]


def test_autoscaling_leaves_the_replica_count_out_of_the_worker_deployment() -> None:
    fixed = built(spec(replicas=3))[("Deployment", "demo-worker-qwen")]
    scaled = built(spec({"maxReplicas": 4}, replicas=3))[("Deployment", "demo-worker-qwen")]
    assert fixed["spec"]["replicas"] == 3
    assert "replicas" not in scaled["spec"]
    assert scaled["spec"]["template"] == fixed["spec"]["template"]  # no roll from turning it on


def test_status_reports_the_autoscalers_count_per_model() -> None:
    raw = spec({"minReplicas": 0, "maxReplicas": 4})
    parsed = parse_spec(OWNER.name, raw)
    live = {
        ("Deployment", "demo-worker-qwen"): {"spec": {"replicas": 0}, "status": {}},
        ("Deployment", "demo-gateway"): {"spec": {"replicas": 3}, "status": {"readyReplicas": 3}},
    }
    status = healthy_status(OWNER, parsed, 1, live)
    assert status["models"] == [{"name": "qwen", "replicas": 0, "readyReplicas": 0}]
    assert status["modelReplicas"] == "qwen=0/0"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] != "NotServing"  # scaled to zero on purpose still serves (queues)


def test_the_gateway_config_carries_each_models_share_and_queue() -> None:
    raw = spec({"maxReplicas": 4}, queue={"maxRequests": 50, "timeoutSeconds": 120})
    settings = gateway_settings(OWNER, parse_spec(OWNER.name, raw))
    assert settings["models"] == ["qwen"]
    # 64 sequences a worker, 3 gateway replicas: 22 each (rounded up).
    assert settings["model_settings"] == {
        "qwen": {"capacity": 22, "queue_max_requests": 50, "queue_timeout_s": 120}
    }
    # The gateway accepts exactly this (the file the operator mounts).
    gateway = GatewaySettings(**settings)
    assert gateway.for_model("qwen").capacity == 22
    assert gateway.for_model("qwen").reserve() == 2  # unset: an eighth of its 22


@pytest.mark.parametrize(("reserve", "each"), [(0, 0), (1, 1), (6, 2), (7, 3)])
def test_each_gateway_process_keeps_its_part_of_a_workers_reserve(reserve: int, each: int) -> None:
    raw = spec({"maxReplicas": 4}, queue={"reserve": reserve})
    settings = gateway_settings(OWNER, parse_spec(OWNER.name, raw))
    assert settings["model_settings"]["qwen"]["queue_reserve"] == each  # 3 gateway replicas
    assert GatewaySettings(**settings).for_model("qwen").reserve() == each


def test_the_gateway_config_carries_the_prefill_limit_and_refuses_a_negative_one() -> None:
    raw = spec({"maxReplicas": 4}, queue={"prefillsOverShare": 1})
    settings = gateway_settings(OWNER, parse_spec(OWNER.name, raw))
    assert settings["model_settings"]["qwen"]["queue_prefills_over_share"] == 1
    assert GatewaySettings(**settings).for_model("qwen").queue_prefills_over_share == 1
    bad = spec({"maxReplicas": 4}, queue={"prefillsOverShare": -1})
    assert problems({"maxReplicas": 4}, queue={"prefillsOverShare": -1}) == [
        "models[0] (qwen).queue: prefillsOverShare must be >= 0 (0: no limit), not -1"
    ]
    assert (
        "queue_prefills_over_share"
        not in gateway_settings(OWNER, parse_spec(OWNER.name, bad))["model_settings"]["qwen"]
    )


def test_the_gateway_config_carries_the_prefill_free_workers_and_refuses_a_negative_count() -> None:
    raw = spec({"maxReplicas": 4}, queue={"prefillFreeWorkers": 1})
    settings = gateway_settings(OWNER, parse_spec(OWNER.name, raw))
    assert (
        settings["model_settings"]["qwen"]["queue_prefill_free_workers"] == 1
    )  # a count of workers: not divided
    assert GatewaySettings(**settings).for_model("qwen").queue_prefill_free_workers == 1
    assert problems({"maxReplicas": 4}, queue={"prefillFreeWorkers": -1}) == [
        "models[0] (qwen).queue: prefillFreeWorkers must be >= 0 (0: none), not -1"
    ]
    unset = gateway_settings(OWNER, parse_spec(OWNER.name, spec({"maxReplicas": 4})))
    assert "queue_prefill_free_workers" not in unset["model_settings"]["qwen"]


@pytest.mark.parametrize(
    ("queue", "max_num_seqs", "message"),
    [
        ({"reserve": -1}, 64, "queue.reserve must be >= 0"),
        # 8 sequences over 3 gateway replicas: 3 slots each; a reserve of 7 keeps 3 of them.
        ({"reserve": 7}, 8, r"queue.reserve \(7\) keeps 3 of the 3 slots each of the 3 gateway processes"),
    ],
)
def test_a_reserve_that_leaves_a_process_no_slot_is_refused(
    queue: dict[str, int], max_num_seqs: int, message: str
) -> None:
    with pytest.raises(InvalidSpecError, match=message):
        parse_spec(OWNER.name, spec(None, maxNumSeqs=max_num_seqs, queue=queue))


# -- engine: keda


def keda_crd_schema() -> dict[str, Any]:
    configured = os.environ.get("VGATE_KEDA_CRD")
    if configured:
        path = Path(configured)
    else:
        script = (ROOT / "hack" / "keda" / "crd.sh").read_text()
        match = re.search(r'KEDA_VERSION="\$\{KEDA_VERSION:-(v[0-9.]+)\}"', script)
        assert match is not None
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        path = cache / "vgate" / "keda" / match.group(1) / "keda.sh_scaledobjects.yaml"
    if not path.exists():
        pytest.fail(f"KEDA's ScaledObject CRD is not at {path}: run `make keda-crd` (make test does)")
    crd = next(d for d in yaml.safe_load_all(path.read_text()) if d)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def scaled_object(**auto: Any) -> dict[str, Any]:
    raw = spec({"minReplicas": 0, "maxReplicas": 6, "engine": "keda", "keda": KEDA, **auto})
    return built(raw)[("ScaledObject", "demo-worker-qwen")]


def test_keda_scaled_object_validates_against_kedas_published_crd() -> None:
    obj = scaled_object()
    jsonschema.Draft4Validator(keda_crd_schema()).validate(obj)
    broken = copy.deepcopy(obj)
    broken["spec"]["minReplicaCount"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(keda_crd_schema()).validate(broken)


def test_keda_maps_the_settings() -> None:
    obj = scaled_object(targetPerReplica=8, scaleDownDelaySeconds=240, scaleToZeroDelaySeconds=900)
    s = obj["spec"]
    assert s["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo-worker-qwen"}
    assert (s["minReplicaCount"], s["maxReplicaCount"], s["cooldownPeriod"], s["pollingInterval"]) == (
        0,
        6,
        900,
        15,
    )
    behavior = s["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 240
    assert behavior["scaleUp"]["policies"] == [{"type": "Percent", "value": 100, "periodSeconds": 15}]
    (trigger,) = s["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["threshold"] == "8"
    assert meta["activationThreshold"] == "0"
    assert meta["ignoreNullValues"] == "false"  # no data holds the count, never reads as zero
    selector = 'namespace="llm",service="demo-gateway",model="qwen"'
    assert meta["query"] == (
        f"sum(avg_over_time(vgate_queue_depth{{{selector}}}[60s])) + "
        f"sum(avg_over_time(vgate_model_inflight{{{selector}}}[60s]))"
    )


def test_keda_leaves_the_replicas_to_the_hpa_and_the_builtin_engine_renders_no_scaled_object() -> None:
    objs = built(spec({"maxReplicas": 6, "engine": "keda", "keda": KEDA}))
    assert "replicas" not in objs[("Deployment", "demo-worker-qwen")]["spec"]
    assert not [k for k in built(spec({"maxReplicas": 6})) if k[0] == "ScaledObject"]
    # An invalid keda block renders none either (the condition says why).
    assert not [k for k in built(spec({"maxReplicas": 6, "engine": "keda"})) if k[0] == "ScaledObject"]


def test_settings_resolve_the_target_from_max_num_seqs() -> None:
    parsed = parse_spec(OWNER.name, spec({"maxReplicas": 2}, maxNumSeqs=32))
    auto = parsed.models[0].autoscaling
    assert auto is not None
    assert PolicySettings.from_spec(auto, 32).target_per_replica == 32
    assert math.isfinite(PolicySettings.from_spec(auto, 32).history_s)
