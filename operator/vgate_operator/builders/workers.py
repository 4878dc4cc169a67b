"""Per-model worker objects: a Deployment of vLLM (or simulator) pods, its Service and PDB."""

from __future__ import annotations

import shlex
from typing import Any

from vgate_operator.builders.common import (
    HTTP_PORT,
    LISTEN_HOST,
    MODEL_LABEL,
    PRE_STOP_SLEEP,
    Manifest,
    Owner,
    container_security_context,
    disruption_budget,
    http_probe,
    image,
    metadata,
    pod_security_context,
    pre_stop_sleep,
    quantity_map,
    selector_labels,
    with_spec_hash,
)
from vgate_operator.spec import (
    NO_QUANTIZATION_FLAG,
    ModelSpec,
    TopologySpread,
    VGateDeploymentSpec,
    WorkerSpec,
    gpus_for,
    worker_name,
)

CACHE_MOUNT = "/models"
GPU_RESOURCE = "nvidia.com/gpu"
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"


def _pod_selector(owner: Owner, model: ModelSpec) -> dict[str, str]:
    return {**selector_labels(owner, "worker"), MODEL_LABEL: model.name}


def build_worker_service(owner: Owner, model: ModelSpec) -> Manifest:
    """ClusterIP Service whose EndpointSlices the gateway watches to find this model's workers."""
    return with_spec_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(
                owner, worker_name(owner.name, model.name), "worker", {MODEL_LABEL: model.name}
            ),
            "spec": {
                "type": "ClusterIP",
                "selector": _pod_selector(owner, model),
                "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
            },
        }
    )


def build_worker_pdb(owner: Owner, model: ModelSpec) -> Manifest:
    """Voluntary disruptions (drains, upgrades) take one worker of a model at a time."""
    return disruption_budget(
        owner, worker_name(owner.name, model.name), "worker", _pod_selector(owner, model)
    )


def build_worker_deployment(owner: Owner, spec: VGateDeploymentSpec, model: ModelSpec) -> Manifest:
    """The model's worker Deployment; any change to the model's settings rolls its pods."""
    name = worker_name(owner.name, model.name)
    pod_labels = {**metadata(owner, name, "worker")["labels"], MODEL_LABEL: model.name}
    deployment_spec: Manifest = {
        "selector": {"matchLabels": _pod_selector(owner, model)},
        # A GPU node rarely has room for a surge pod: replace in place, one at a time.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
        "template": {"metadata": {"labels": pod_labels}, "spec": _pod_spec(owner, spec, model)},
    }
    # With autoscaling the count is the autoscaler's (its own field manager, or KEDA's HPA):
    # the operator never sends it, so no apply of the rest ever resets it.
    if model.autoscaling is None:
        deployment_spec = {"replicas": model.replicas, **deployment_spec}
    return with_spec_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(owner, name, "worker", {MODEL_LABEL: model.name}),
            "spec": deployment_spec,
        }
    )


def _pod_spec(owner: Owner, spec: VGateDeploymentSpec, model: ModelSpec) -> Manifest:
    worker = spec.worker
    pod: Manifest = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": 30 if worker.dry_run else 120,
        "containers": [_container(spec, model)],
        "volumes": _volumes(spec),
    }
    if worker.node_selector:
        pod["nodeSelector"] = dict(worker.node_selector)
    if worker.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in worker.tolerations]
    if worker.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": ref.name} for ref in worker.image_pull_secrets]
    if worker.runtime_class_name:
        pod["runtimeClassName"] = worker.runtime_class_name
    spread = _topology_spread(owner, worker, model)
    if spread:
        pod["topologySpreadConstraints"] = spread
    return pod


def _topology_spread(owner: Owner, worker: WorkerSpec, model: ModelSpec) -> list[Manifest]:
    # Default: prefer one node per replica, so a node failure takes few of a model's workers.
    wanted = worker.topology_spread_constraints
    if wanted is None:
        wanted = [TopologySpread(topology_key=HOSTNAME_TOPOLOGY)]
    return [
        {
            "maxSkew": c.max_skew,
            "topologyKey": c.topology_key,
            "whenUnsatisfiable": c.when_unsatisfiable,
            "labelSelector": {"matchLabels": _pod_selector(owner, model)},
            # Spread each rollout's pods on their own, not old and new together.
            "matchLabelKeys": ["pod-template-hash"],
        }
        for c in wanted
    ]


def _volumes(spec: VGateDeploymentSpec) -> list[Manifest]:
    cache = spec.worker.model_cache
    cache_volume: Manifest
    if cache.existing_claim:
        cache_volume = {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache.existing_claim}}
    else:
        cache_volume = {"name": "model-cache", "emptyDir": quantity_map({"sizeLimit": cache.size_limit})}
    return [
        cache_volume,
        # vLLM's workers exchange tensors through shared memory; the default 64Mi /dev/shm is too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.worker.shm_size}},
        {"name": "tmp", "emptyDir": {}},
    ]


def _container(spec: VGateDeploymentSpec, model: ModelSpec) -> Manifest:
    worker = spec.worker
    dry_run = worker.dry_run
    container: Manifest = {
        "name": "worker",
        "image": worker.image or image("worker-dry-run" if dry_run else "worker"),
        "args": _dry_run_args(model) if dry_run else ["worker"],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "resources": _resources(spec, model),
        "volumeMounts": [
            {"name": "model-cache", "mountPath": CACHE_MOUNT},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": container_security_context(read_only_root=False),
        "lifecycle": pre_stop_sleep(PRE_STOP_SLEEP),
        **_probes(dry_run),
    }
    # Never an empty list or value: the API server drops them, and what it drops would read as drift.
    if not dry_run:
        container["env"] = _vllm_env(spec, model)
    elif model.max_loras is not None:
        # vLLM (and the simulator) serve the runtime adapter API only when this is set.
        container["env"] = [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}]
    if worker.image_pull_policy:
        container["imagePullPolicy"] = worker.image_pull_policy
    return container


def _dry_run_args(model: ModelSpec) -> list[str]:
    args = [
        "worker", "--dry-run", "--host", LISTEN_HOST, "--port", str(HTTP_PORT),
        "--served-model-name", model.name,
        "--max-model-len", str(model.max_model_len),
        "--max-num-seqs", str(model.max_num_seqs),
        *_dry_run_lora_args(model),
    ]  # fmt: skip
    # The simulator honours the scheduler settings too; only those set are passed.
    if model.max_num_batched_tokens is not None:
        args += ["--max-num-batched-tokens", str(model.max_num_batched_tokens)]
    if model.long_prefill_token_threshold is not None:
        args += ["--long-prefill-token-threshold", str(model.long_prefill_token_threshold)]
    if model.enable_chunked_prefill is not None:
        args.append(
            "--enable-chunked-prefill" if model.enable_chunked_prefill else "--no-enable-chunked-prefill"
        )
    if not model.enable_prefix_caching:
        args.append("--no-enable-prefix-caching")
    if model.scheduling_policy != "fcfs":
        args += ["--scheduling-policy", model.scheduling_policy]
    return args


def _lora_sizes(model: ModelSpec) -> dict[str, int | None]:
    """The LoRA sizes the workers start with. The adapters themselves are not here: they go to
    the gateway's configuration, so adding or removing one never changes the pod template."""
    return {
        "max_loras": model.max_loras,
        "max_lora_rank": model.max_lora_rank,
        "max_cpu_loras": model.max_cpu_loras,
    }


def _dry_run_lora_args(model: ModelSpec) -> list[str]:
    if model.max_loras is None:
        return []
    args = ["--enable-lora"]
    for key, value in _lora_sizes(model).items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _vllm_env(spec: VGateDeploymentSpec, model: ModelSpec) -> list[Manifest]:
    values: dict[str, str] = {
        "VGATE_WORKER_MODEL": model.model,
        "VGATE_WORKER_SERVED_MODEL_NAME": model.name,
        "VGATE_WORKER_MAX_MODEL_LEN": str(model.max_model_len),
        "VGATE_WORKER_GPU_MEMORY_UTILIZATION": str(model.gpu_memory_utilization),
        "VGATE_WORKER_MAX_NUM_SEQS": str(model.max_num_seqs),
        "VGATE_WORKER_TENSOR_PARALLEL_SIZE": str(gpus_for(model, spec.worker)),
        "VGATE_WORKER_HOST": LISTEN_HOST,
        "VGATE_WORKER_PORT": str(HTTP_PORT),
        "VGATE_WORKER_DOWNLOAD_DIR": f"{CACHE_MOUNT}/weights",
        "HF_HOME": f"{CACHE_MOUNT}/hf",
    }
    if model.max_num_batched_tokens is not None:
        values["VGATE_WORKER_MAX_NUM_BATCHED_TOKENS"] = str(model.max_num_batched_tokens)
    if model.long_prefill_token_threshold is not None:
        values["VGATE_WORKER_LONG_PREFILL_TOKEN_THRESHOLD"] = str(model.long_prefill_token_threshold)
    if model.enable_chunked_prefill is not None:
        values["VGATE_WORKER_ENABLE_CHUNKED_PREFILL"] = str(model.enable_chunked_prefill).lower()
    if not model.enable_prefix_caching:
        values["VGATE_WORKER_ENABLE_PREFIX_CACHING"] = "false"
    if model.kv_cache_dtype is not None:
        values["VGATE_WORKER_KV_CACHE_DTYPE"] = model.kv_cache_dtype
    if model.scheduling_policy != "fcfs":
        values["VGATE_WORKER_SCHEDULING_POLICY"] = model.scheduling_policy
    if model.engine_args:
        values["VGATE_WORKER_EXTRA_ARGS"] = shlex.join(model.engine_args)
    for key, value in _lora_sizes(model).items():
        if value is not None:
            values[f"VGATE_WORKER_{key.upper()}"] = str(value)
    # Without --quantization vLLM reads the method from the checkpoint's config and picks the
    # fastest kernel the GPU has (awq_marlin for AWQ where supported).
    if model.quantization not in NO_QUANTIZATION_FLAG:
        values["VGATE_WORKER_QUANTIZATION"] = model.quantization
    env: list[Manifest] = [{"name": k, "value": v} for k, v in values.items()]
    ref = spec.worker.hf_token_secret_ref
    if ref is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def _resources(spec: VGateDeploymentSpec, model: ModelSpec) -> Manifest:
    res = model.resources
    requests = quantity_map({"cpu": res.cpu, "memory": res.memory})
    limits: dict[str, Any] = quantity_map({"memory": res.memory})
    gpus = gpus_for(model, spec.worker)
    if gpus:
        limits[GPU_RESOURCE] = gpus
    out: Manifest = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _probes(dry_run: bool) -> Manifest:
    if dry_run:
        return {
            "startupProbe": http_probe("/health", period=1, failures=60),
            "readinessProbe": http_probe("/health", period=2, failures=2),
            "livenessProbe": http_probe("/health", period=5, failures=3),
        }
    return {
        # Downloading and loading weights (and compiling kernels) can take many minutes:
        # allow up to 30 minutes before liveness takes over.
        "startupProbe": http_probe("/health", period=10, failures=180, timeout=5),
        "readinessProbe": http_probe("/health", period=5, failures=3, timeout=5),
        "livenessProbe": http_probe("/health", period=10, failures=6, timeout=10),
    }
