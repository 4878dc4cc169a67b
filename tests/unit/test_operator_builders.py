"""Builders as data: the objects the operator applies, checked against the component contracts."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from vgate_gateway.settings import GatewaySettings, load_settings
from vgate_operator import __version__
from vgate_operator.builders import Owner, build_all
from vgate_operator.builders.common import HTTP_PORT
from vgate_operator.builders.gateway import INTERNAL_PORT
from vgate_operator.spec import parse_spec
from vgate_worker.settings import WorkerSettings

OWNER = Owner(name="demo", namespace="llm", uid="2f1c6c1e-0000-4000-8000-000000000001")
GPU_SPEC: dict[str, Any] = {
    "models": [
        {
            "name": "qwen",
            "model": "Qwen/Qwen2.5-1.5B-Instruct-AWQ",
            "quantization": "awq_marlin",
            "replicas": 2,
            "maxModelLen": 8192,
            "gpuMemoryUtilization": 0.85,
            "maxNumSeqs": 128,
            "engineArgs": ["--enable-prefix-caching", "--kv-cache-dtype", "fp8 e4m3"],
            "resources": {"gpus": 2, "cpu": "4", "memory": "16Gi"},
            "routing": "session",
        }
    ],
    "worker": {"hfTokenSecretRef": {"name": "hf", "key": "tok"}, "modelCache": {"existingClaim": "weights"}},
    "gateway": {"replicas": 3, "batching": {"batchSize": 16, "batchWaitMs": 2}, "cache": {"maxSize": 10}},
}
DRY_SPEC: dict[str, Any] = {
    "models": [{"name": "sim", "replicas": 2, "maxModelLen": 2048, "maxNumSeqs": 8}],
    "worker": {"dryRun": True},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "host": "vgate.example.com",
        "tls": {"secretName": "t"},
    },
}


def objects(raw: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    built = build_all(OWNER, parse_spec(OWNER.name, raw))
    return {(o["kind"], o["metadata"]["name"]): o for o in built}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_every_child_is_labelled_and_controlled_by_the_resource() -> None:
    objs = objects(DRY_SPEC)
    assert set(objs) == {
        ("ServiceAccount", "demo-gateway"),
        ("Role", "demo-gateway"),
        ("RoleBinding", "demo-gateway"),
        ("ConfigMap", "demo-gateway"),
        ("Service", "demo-gateway"),
        ("Deployment", "demo-gateway"),
        ("PodDisruptionBudget", "demo-gateway"),
        ("Ingress", "demo-gateway"),
        ("Service", "demo-worker-sim"),
        ("Deployment", "demo-worker-sim"),
        ("PodDisruptionBudget", "demo-worker-sim"),
    }
    for obj in objs.values():
        meta = obj["metadata"]
        assert meta["namespace"] == "llm"
        assert meta["ownerReferences"] == [
            {"apiVersion": "vgate.io/v1alpha1", "kind": "VGateDeployment", "name": "demo",
             "uid": OWNER.uid, "controller": True}
        ]  # fmt: skip
        labels = meta["labels"]
        for key in ("name", "instance", "component", "part-of", "managed-by", "version"):
            assert labels[f"app.kubernetes.io/{key}"]
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/version"] == __version__
        assert meta["annotations"]["vgate.io/spec-hash"]


def test_gpu_worker_follows_the_worker_contract() -> None:
    deployment = objects(GPU_SPEC)[("Deployment", "demo-worker-qwen")]
    assert deployment["spec"]["replicas"] == 2
    c = container(deployment)
    assert c["image"] == f"ghcr.io/vgate/worker:{__version__}"
    assert c["args"] == ["worker"]
    assert c["ports"] == [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    env = env_of(c)
    assert env["VGATE_WORKER_MODEL"] == "Qwen/Qwen2.5-1.5B-Instruct-AWQ"
    assert env["VGATE_WORKER_SERVED_MODEL_NAME"] == "qwen"
    assert env["VGATE_WORKER_QUANTIZATION"] == "awq_marlin"
    assert env["VGATE_WORKER_MAX_MODEL_LEN"] == "8192"
    assert env["VGATE_WORKER_GPU_MEMORY_UTILIZATION"] == "0.85"
    assert env["VGATE_WORKER_MAX_NUM_SEQS"] == "128"
    assert env["VGATE_WORKER_TENSOR_PARALLEL_SIZE"] == "2"
    assert env["VGATE_WORKER_PORT"] == str(HTTP_PORT)
    assert env["VGATE_WORKER_HOST"] == "0.0.0.0"
    assert shlex.split(env["VGATE_WORKER_EXTRA_ARGS"]) == GPU_SPEC["models"][0]["engineArgs"]
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "tok"}}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert env["VGATE_WORKER_DOWNLOAD_DIR"].startswith(mounts["model-cache"])
    assert env["HF_HOME"].startswith(mounts["model-cache"])
    assert mounts["dshm"] == "/dev/shm"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert c["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}


def test_gpu_worker_pod_is_hardened_and_patient() -> None:
    pod = objects(GPU_SPEC)[("Deployment", "demo-worker-qwen")]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["model-cache"] == {
        "name": "model-cache",
        "persistentVolumeClaim": {"claimName": "weights"},
    }
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    # Weights download and load: the startup probe tolerates at least 30 minutes.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"


def test_worker_pods_drain_and_spread_and_take_the_pod_options() -> None:
    raw = copy.deepcopy(GPU_SPEC)
    raw["worker"].update(
        imagePullSecrets=[{"name": "registry"}],
        runtimeClassName="nvidia",
    )
    objs = objects(raw)
    pod = objs[("Deployment", "demo-worker-qwen")]["spec"]["template"]["spec"]
    selector = objs[("Deployment", "demo-worker-qwen")]["spec"]["selector"]["matchLabels"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    assert pod["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert pod["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector},
            "matchLabelKeys": ["pod-template-hash"],
        }
    ]
    pdb = objs[("PodDisruptionBudget", "demo-worker-qwen")]["spec"]
    assert pdb == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": selector},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    assert (
        objs[("PodDisruptionBudget", "demo-gateway")]["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    )
    raw["worker"]["topologySpreadConstraints"] = []
    pod = objects(raw)[("Deployment", "demo-worker-qwen")]["spec"]["template"]["spec"]
    assert "topologySpreadConstraints" not in pod


def test_vllm_chooses_the_quantization_kernel_unless_told() -> None:
    raw = copy.deepcopy(GPU_SPEC)
    del raw["models"][0]["quantization"]
    del raw["models"][0]["engineArgs"]
    env = env_of(container(objects(raw)[("Deployment", "demo-worker-qwen")]))
    # No --quantization: vLLM reads AWQ from the checkpoint and upgrades it to awq_marlin.
    assert "VGATE_WORKER_QUANTIZATION" not in env
    assert "VGATE_WORKER_EXTRA_ARGS" not in env  # never an empty value


def test_dry_run_worker_runs_the_simulator_without_gpus() -> None:
    deployment = objects(DRY_SPEC)[("Deployment", "demo-worker-sim")]
    c = container(deployment)
    assert c["image"] == f"ghcr.io/vgate/worker-dry-run:{__version__}"
    assert c["args"] == [
        "worker", "--dry-run", "--host", "0.0.0.0", "--port", str(HTTP_PORT),
        "--served-model-name", "sim", "--max-model-len", "2048", "--max-num-seqs", "8",
    ]  # fmt: skip
    assert "nvidia.com/gpu" not in str(c["resources"])
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] <= 120


def test_env_loads_with_the_worker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = copy.deepcopy(GPU_SPEC)
    raw["models"][0].update(model="Qwen/Qwen2.5-1.5B-Instruct", quantization="none")
    env = env_of(container(objects(raw)[("Deployment", "demo-worker-qwen")]))
    for name, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    settings = WorkerSettings()
    assert settings.model == "Qwen/Qwen2.5-1.5B-Instruct"
    assert settings.served_model_name == "qwen"
    assert settings.quantization == "none"
    assert settings.tensor_parallel_size == 2
    assert (settings.max_model_len, settings.max_num_seqs, settings.gpu_memory_utilization) == (
        8192,
        128,
        0.85,
    )
    assert (settings.host, settings.port) == ("0.0.0.0", HTTP_PORT)
    assert settings.download_dir == env["VGATE_WORKER_DOWNLOAD_DIR"]
    assert shlex.split(settings.extra_args) == raw["models"][0]["engineArgs"]


def test_worker_service_selects_only_its_models_pods() -> None:
    raw = copy.deepcopy(DRY_SPEC)
    raw["models"].append({"name": "other"})
    objs = objects(raw)
    for model in ("sim", "other"):
        service = objs[("Service", f"demo-worker-{model}")]
        pods = objs[("Deployment", f"demo-worker-{model}")]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["ports"] == [
            {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}
        ]
        assert service["spec"]["selector"].items() <= pods.items()
        assert service["spec"]["selector"]["vgate.io/model"] == model


def test_gateway_config_loads_with_the_gateway_settings(tmp_path: Path) -> None:
    config = objects(GPU_SPEC)[("ConfigMap", "demo-gateway")]
    path = tmp_path / "gateway.yaml"
    path.write_text(config["data"]["gateway.yaml"])
    settings = load_settings(config=path)
    assert settings.host == "0.0.0.0"
    assert settings.port == HTTP_PORT
    assert settings.log_json is True
    assert settings.discovery == "kubernetes"
    assert settings.namespace == "llm"
    assert settings.services == {"qwen": "demo-worker-qwen"}
    assert settings.routing == "prefix-aware"
    assert settings.routing_per_model == {"qwen": "session"}
    assert (settings.batch_size, settings.batch_wait_ms) == (16, 2)
    assert settings.cache_maxsize == 10
    assert settings.cache_ttl_s == 600
    assert settings.dedup is True


def test_gateway_pod_contract() -> None:
    objs = objects(GPU_SPEC)
    deployment = objs[("Deployment", "demo-gateway")]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == f"ghcr.io/vgate/gateway:{__version__}"
    assert c["args"] == ["gateway", "--config", "/etc/vgate/gateway.yaml"]
    assert c["ports"] == [
        {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
        {"name": "internal", "containerPort": INTERNAL_PORT, "protocol": "TCP"},
    ]
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    # Room for the preStop sleep, then the gateway's own graceful shutdown of in-flight streams.
    shutdown = c["lifecycle"]["preStop"]["sleep"]["seconds"] + GatewaySettings().shutdown_grace_s
    assert pod["terminationGracePeriodSeconds"] > shutdown
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/vgate"
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == "demo-gateway"
    assert pod["serviceAccountName"] == "demo-gateway"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def _gateway(gateway: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The gateway's settings file (parsed) and container for a spec with this ``gateway``."""
    objs = objects({**DRY_SPEC, "gateway": gateway})
    config = yaml.safe_load(objs[("ConfigMap", "demo-gateway")]["data"]["gateway.yaml"])
    return config, container(objs[("Deployment", "demo-gateway")])


def test_gateway_processes_go_in_the_configmap_and_size_the_cpu_request(tmp_path: Path) -> None:
    config, one = _gateway({})
    assert config["processes"] == 1
    assert "env" not in one  # every setting comes from the ConfigMap, like the others
    assert one["resources"]["requests"]["cpu"] == "250m"
    config, four = _gateway({"processes": 4})
    assert config["processes"] == 4
    assert four["resources"]["requests"] == {"cpu": "4", "memory": "256Mi"}
    _, explicit = _gateway({"processes": 4, "resources": {"requests": {"cpu": "1500m"}}})
    assert explicit["resources"]["requests"]["cpu"] == "1500m"  # the user's request wins
    # The file the pod gets is one the gateway's settings accept.
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    assert load_settings(config=path).processes == 4


def test_the_old_gateway_workers_name_still_sets_the_processes() -> None:
    config, c = _gateway({"workers": 3})
    assert config["processes"] == 3
    assert "workers" not in config
    assert c["resources"]["requests"]["cpu"] == "3"
    assert _gateway({"workers": 3, "processes": 3})[0]["processes"] == 3
    # workers: 1 is the old schema default every older resource carries: processes wins.
    assert _gateway({"workers": 1, "processes": 4})[0]["processes"] == 4


def test_gateway_role_grants_only_endpointslice_reads() -> None:
    objs = objects(GPU_SPEC)
    assert objs[("Role", "demo-gateway")]["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = objs[("RoleBinding", "demo-gateway")]
    assert binding["roleRef"]["name"] == "demo-gateway"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-gateway", "namespace": "llm"}]


def _template(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return objects(raw)[("Deployment", name)]["spec"]["template"]


def test_gateway_settings_change_rolls_the_gateway_but_worker_replicas_do_not() -> None:
    base = _template(GPU_SPEC, "demo-gateway")
    changed = copy.deepcopy(GPU_SPEC)
    changed["gateway"]["dedup"] = False
    assert _template(changed, "demo-gateway") != base
    scaled = copy.deepcopy(GPU_SPEC)
    scaled["models"][0]["replicas"] = 4
    assert _template(scaled, "demo-gateway") == base
    assert _template(scaled, "demo-worker-qwen") == _template(GPU_SPEC, "demo-worker-qwen")
    # Each gateway replica's share of a worker's batch changes with their number: they roll.
    more = copy.deepcopy(GPU_SPEC)
    more["gateway"]["replicas"] = 5
    assert _template(more, "demo-gateway") != base


@pytest.mark.parametrize(
    "change",
    [
        {"maxNumSeqs": 32},
        {"gpuMemoryUtilization": 0.5},
        {"engineArgs": []},
        {"model": "Qwen/Qwen2.5-7B-Instruct-AWQ"},
    ],
)
def test_model_change_rolls_its_workers(change: dict[str, Any]) -> None:
    raw = copy.deepcopy(GPU_SPEC)
    raw["models"][0].update(change)
    assert _template(raw, "demo-worker-qwen") != _template(GPU_SPEC, "demo-worker-qwen")


def test_ingress_routes_the_host_to_the_gateway_service() -> None:
    ingress = objects(DRY_SPEC)[("Ingress", "demo-gateway")]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "vgate.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "demo-gateway", "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [{"hosts": ["vgate.example.com"], "secretName": "t"}]
    assert ("Ingress", "demo-gateway") not in objects(GPU_SPEC)


def test_builders_are_deterministic() -> None:
    assert yaml.safe_dump(build_all(OWNER, parse_spec("demo", GPU_SPEC))) == yaml.safe_dump(
        build_all(OWNER, parse_spec("demo", copy.deepcopy(GPU_SPEC)))
    )


def test_scheduler_and_kv_settings_reach_vllm_and_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    from vgate_worker.launcher import build_vllm_argv
    from vgate_worker.sim.settings import settings_from_argv

    tuned = {
        "maxNumBatchedTokens": 512,
        "enableChunkedPrefill": False,
        "enablePrefixCaching": False,
        "kvCacheDtype": "fp8",
    }
    raw = copy.deepcopy(GPU_SPEC)
    raw["models"][0].update(tuned, engineArgs=[], maxModelLen=512)
    env = env_of(container(objects(raw)[("Deployment", "demo-worker-qwen")]))
    for name, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    argv = build_vllm_argv(WorkerSettings())
    assert argv[argv.index("--max-num-batched-tokens") + 1] == "512"
    assert argv[argv.index("--kv-cache-dtype") + 1] == "fp8"
    assert "--no-enable-chunked-prefill" in argv
    assert "--no-enable-prefix-caching" in argv
    # Untouched fields add no flag: vLLM keeps its own defaults.
    plain = env_of(container(objects(GPU_SPEC)[("Deployment", "demo-worker-qwen")]))
    assert not {"VGATE_WORKER_MAX_NUM_BATCHED_TOKENS", "VGATE_WORKER_ENABLE_CHUNKED_PREFILL"} & set(plain)

    dry = copy.deepcopy(DRY_SPEC)
    dry["models"][0].update(maxNumBatchedTokens=2048, enableChunkedPrefill=False, enablePrefixCaching=False)
    args = container(objects(dry)[("Deployment", "demo-worker-sim")])["args"]
    sim = settings_from_argv(args[2:])
    assert (sim.max_num_batched_tokens, sim.enable_chunked_prefill, sim.enable_prefix_caching) == (
        2048,
        False,
        False,
    )
