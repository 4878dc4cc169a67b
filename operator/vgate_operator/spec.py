"""Typed view of a VGateDeployment: pydantic models of the CRD spec, plus cross-field checks.

The CRD's OpenAPI schema already rejects malformed objects at admission; these models
add the rules a schema cannot express (duplicate model names, a quantization that
contradicts the model id, GPUs requested for simulated workers, child names that
would exceed Kubernetes' limits). Anything they reject is an :class:`InvalidSpecError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, ValidationError, model_validator
from pydantic.config import JsonDict

from vgate_operator.autoscale.spec import AutoscalingSpec, QueueSpec
from vgate_operator.schema import SchemaModel

DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct-AWQ"
#: Longest child name we create: Service names are DNS-1035 labels (63 characters).
MAX_CHILD_NAME = 63

#: Ingress annotations a VGateDeployment may set. Others (configuration/server snippets,
#: auth-url, rewrite rules, backend-protocol, ...) could run code in the ingress controller
#: or route around the gateway, so they are refused.
ALLOWED_INGRESS_ANNOTATIONS = frozenset(
    {
        "cert-manager.io/cluster-issuer",
        "cert-manager.io/issuer",
        "external-dns.alpha.kubernetes.io/hostname",
        "external-dns.alpha.kubernetes.io/ttl",
        "nginx.ingress.kubernetes.io/proxy-body-size",
        "nginx.ingress.kubernetes.io/proxy-buffering",
        "nginx.ingress.kubernetes.io/proxy-request-buffering",
        "nginx.ingress.kubernetes.io/proxy-read-timeout",
        "nginx.ingress.kubernetes.io/proxy-send-timeout",
        "nginx.ingress.kubernetes.io/proxy-connect-timeout",
        "nginx.ingress.kubernetes.io/ssl-redirect",
        "nginx.ingress.kubernetes.io/force-ssl-redirect",
        "nginx.ingress.kubernetes.io/whitelist-source-range",
        "nginx.ingress.kubernetes.io/limit-rps",
        "nginx.ingress.kubernetes.io/limit-connections",
        "traefik.ingress.kubernetes.io/router.entrypoints",
        "traefik.ingress.kubernetes.io/router.tls",
        "alb.ingress.kubernetes.io/scheme",
        "alb.ingress.kubernetes.io/certificate-arn",
        "alb.ingress.kubernetes.io/listen-ports",
        "alb.ingress.kubernetes.io/idle-timeout",
    }
)

#: ``auto``: no ``--quantization`` flag, vLLM reads the method from the checkpoint's config and
#: picks the fastest kernel the GPU supports (``awq_marlin`` for AWQ where it can).
#: ``none`` declares unquantized weights (vLLM is given no flag either).
#: The worker's own setting has no ``auto``: its ``none`` (the default) already means "no flag".
Quantization = Literal["auto", "awq", "awq_marlin", "gptq", "fp8", "none"]
#: The values that leave the worker at its default, passing vLLM no ``--quantization``; the
#: spec tells them apart only to check the model id against them.
NO_QUANTIZATION_FLAG = frozenset({"auto", "none"})
#: Hub id markers of a checkpoint's quantization: a method that needs such a checkpoint
#: contradicts an id that names another (or, for a hub id, none at all).
_CHECKPOINT_METHODS = {"awq": ("awq", "awq_marlin"), "gptq": ("gptq",)}
Routing = Literal["round-robin", "least-request", "least-load", "session", "prefix-aware"]
#: A Kubernetes resource quantity (``resource.Quantity``): a number, or a string such as ``250m``.
QUANTITY = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
Quantity = int | Annotated[str, StringConstraints(pattern=QUANTITY)]
#: An Ingress host: a DNS name, optionally with a leading ``*.`` wildcard.
HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


#: ``gateway.workers``, the old name of ``gateway.processes``, defaulted to 1 in the schema, so
#: the API server stored it in every resource created before the rename.
OLD_WORKERS_DEFAULT = 1
REMOVE_WORKERS = (
    'kubectl patch vgd {name} --type json -p \'[{{"op": "remove", "path": "/spec/gateway/workers"}}]\' '
    "removes it"
)


def no_schema_default(schema: JsonDict) -> None:
    """Keeps a field's default out of the CRD: the operator applies it, the API server does not.

    For a field that an older name may still set: a default stored by the API server would
    stand beside the old name's value as if both had been written.
    """
    schema.pop("default", None)


#: Extra schema keys of a field whose 64-bit range the CRD declares (int32 otherwise).
INT64: JsonDict = {"format": "int64"}


class InvalidSpecError(ValueError):
    """The resource's spec cannot be reconciled as written; the message says why."""


class ModelResources(SchemaModel):
    gpus: int | None = Field(None, ge=1, le=16)
    """nvidia.com/gpu limit and tensor-parallel size (default 1). Must be unset with worker.dryRun."""
    cpu: Quantity | None = None
    memory: Quantity | None = None


#: vLLM's ``--max-lora-rank`` when none is given.
VLLM_DEFAULT_MAX_LORA_RANK = 16


class AdapterSpec(SchemaModel):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    """What clients put in `model` to use the adapter; unique among models and adapters."""
    source: str = Field(min_length=1)
    """Where vLLM loads it from: a path in the worker pod (the model cache is mounted at
    /models), or a Hugging Face id."""
    min_workers: int = Field(0, ge=0, le=100)
    """Workers that keep the adapter loaded whatever its traffic (0: loaded on demand)."""
    rank: int | None = Field(None, ge=1)
    """The adapter's LoRA rank, when known: checked against maxLoraRank."""


class ModelSpec(SchemaModel):
    name: str = Field(pattern=DNS_LABEL, max_length=40)
    """Served model name (the `model` clients send). Also names child objects, so it must be a
    DNS label."""
    model: str = Field(DEFAULT_MODEL, min_length=1)
    """Hugging Face model id or a local path inside the model cache."""
    quantization: Quantization = "auto"
    """Quantization method passed to vLLM. `auto` (default) lets vLLM read it from the checkpoint
    and pick the fastest kernel the GPU supports (awq_marlin for AWQ where it can); `none`
    declares unquantized weights; a method that contradicts the model id is an invalid spec."""
    replicas: int = Field(1, ge=0, le=100)
    max_model_len: int = Field(4096, ge=16)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_num_seqs: int = Field(64, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=16)
    """Tokens one engine step may process; unset: vLLM's default for the hardware."""
    enable_chunked_prefill: bool | None = None
    """Split long prefills across steps; unset: vLLM's default (on)."""
    long_prefill_token_threshold: int | None = Field(None, ge=1)
    """vLLM's --long-prefill-token-threshold: while others are scheduled, one request's prefill
    takes at most this many tokens a step, so a short prompt is not held behind a long one's
    chunks (docs/fairness.md); at most maxModelLen. Unset: no cap (vLLM's default)."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of a shared prompt prefix (vLLM's automatic prefix caching)."""
    kv_cache_dtype: Literal["auto", "fp8"] | None = None
    """fp8 halves the KV cache's memory; unset: the model's dtype."""
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    """vLLM's --scheduling-policy. `priority`: the gateway sends each request's engine priority
    (from its key's class and fair-share standing) and vLLM admits waiting requests by it,
    preempting the least urgent when KV blocks run out (docs/fairness.md)."""
    engine_args: list[str] = Field(default_factory=list)
    """Extra vLLM engine arguments, passed through unchanged."""
    resources: ModelResources = Field(default_factory=ModelResources)
    routing: Routing | None = None
    """Overrides gateway.routing for this model."""
    max_loras: int | None = Field(None, ge=1, le=256)
    """LoRA adapter slots per worker (vLLM's --max-loras); setting it enables LoRA on the
    workers. Adapters are then added and removed without restarting them."""
    max_lora_rank: int | None = Field(None, ge=1, le=512)
    """The largest adapter rank the workers serve (vLLM's --max-lora-rank, default 16)."""
    max_cpu_loras: int | None = Field(None, ge=1, le=1024)
    """Adapters vLLM caches in CPU memory (--max-cpu-loras), at least maxLoras."""
    adapters: list[AdapterSpec] = Field(default_factory=list)
    """LoRA adapters of this model: loaded on the workers where their requests go, through
    vLLM's runtime adapter API (no restart when this list changes)."""
    autoscaling: AutoscalingSpec | None = None
    """Scale the workers on load; replicas is then ignored (see docs/autoscaling.md)."""
    queue: QueueSpec = Field(default_factory=QueueSpec)
    """How the gateways hold this model's requests while no worker can take them."""


class SecretKeyRef(SchemaModel):
    name: str = Field(min_length=1)
    key: str = Field("token", min_length=1)


class ModelCache(SchemaModel):
    existing_claim: str | None = None
    """An existing PersistentVolumeClaim (ReadWriteMany for several replicas)."""
    size_limit: Quantity | None = "20Gi"
    """Size limit of the emptyDir cache."""


class Toleration(SchemaModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, json_schema_extra=INT64)


class LocalObjectReference(SchemaModel):
    name: str = Field(min_length=1)


class TopologySpread(SchemaModel):
    max_skew: int = Field(1, ge=1)
    topology_key: str = Field(min_length=1)
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = "ScheduleAnyway"


class WorkerSpec(SchemaModel):
    image: str | None = None
    """Worker image; defaults to ghcr.io/vgate/worker:VERSION, or ghcr.io/vgate/worker-dry-run:VERSION
    with dryRun."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    """Secrets for pulling the worker image from a private registry."""
    runtime_class_name: str | None = None
    """RuntimeClass of the worker pods, e.g. `nvidia` where the GPU runtime is not the default."""
    topology_spread_constraints: list[TopologySpread] | None = None
    """How each model's worker pods spread over the topology (the label selector is the model's
    pods). Unset: prefer one pod per node (kubernetes.io/hostname, ScheduleAnyway); an empty list:
    no constraint."""
    dry_run: bool = False
    """Run the vLLM simulator instead of vLLM (no GPU, no model download)."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    hf_token_secret_ref: SecretKeyRef | None = None
    """Secret key holding a Hugging Face token (exposed as HF_TOKEN)."""
    model_cache: ModelCache = Field(default_factory=ModelCache)
    """Where weights are downloaded; an emptyDir per pod unless existingClaim is set."""
    shm_size: Quantity = "1Gi"
    """Size of the in-memory /dev/shm volume."""


class Batching(SchemaModel):
    batch_size: int = Field(8, ge=1, le=256)
    batch_wait_ms: float = Field(3.0, ge=0, le=1000)


class Cache(SchemaModel):
    max_size: int = Field(1000, ge=0)
    """Cached responses at most; 0 disables the cache."""
    ttl_seconds: float = Field(600.0, gt=0)


class RateLimit(SchemaModel):
    requests_per_minute: int | None = Field(None, ge=1)
    burst: int | None = Field(None, ge=1)
    """Requests a key may make at once; default one minute's worth."""
    tokens_per_minute: int | None = Field(None, ge=1)
    """Prompt plus completion tokens, charged from each answer's usage."""
    token_burst: int | None = Field(None, ge=1)
    """Tokens a key may spend at once; default one minute's worth."""


class ApiKeysSecretRef(SchemaModel):
    name: str = Field(min_length=1)
    key: str = Field("keys", min_length=1)


class RedisUrlSecretRef(SchemaModel):
    name: str = Field(min_length=1)
    key: str = Field("url", min_length=1)


class RedisSpec(SchemaModel):
    url_secret_ref: RedisUrlSecretRef
    """Secret key holding the redis:// or rediss:// URL (with its password)."""
    failure_mode: Literal["open", "closed"] = "open"
    """While Redis is unreachable, admit requests (open) or refuse them with 503 (closed)."""


class ResourceRequirements(SchemaModel):
    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class GatewaySpec(SchemaModel):
    replicas: int = Field(2, ge=0, le=100)
    processes: int = Field(1, ge=1, le=64, json_schema_extra=no_schema_default)
    """Serving processes in each gateway pod (VGATE_PROCESSES; default 1), each about one core
    under load. Unless resources.requests.cpu is set, the pod requests one core for each when
    there is more than one."""
    workers: int | None = Field(None, ge=1, le=64)
    """Deprecated: the old name of processes, accepted for one release (the Deprecated condition
    says so). Set and different from processes (other than 1, the old default), the spec is
    invalid."""
    image: str | None = None
    """Gateway image; defaults to ghcr.io/vgate/gateway:VERSION."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    """Secrets for pulling the gateway image from a private registry."""
    batching: Batching = Field(default_factory=Batching)
    cache: Cache = Field(default_factory=Cache)
    dedup: bool = True
    """Serve identical concurrent requests with one upstream call."""
    queue_policy: Literal["fair", "fifo"] = "fair"
    """The order a model's queue is served in when its workers are full: `fair` (priority class,
    then weighted fair share of tokens between API keys, then arrival) or `fifo`."""
    routing: Routing = "prefix-aware"
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "250m", "memory": "256Mi"}, limits={"memory": "1Gi"}
        )
    )
    """Default: requests 250m CPU and 256Mi memory, a 1Gi memory limit (applied by the operator)."""
    termination_grace_period_seconds: int = Field(120, ge=1, le=3600, json_schema_extra=INT64)
    """Time a terminating gateway pod has to finish in-flight streams."""
    api_keys_secret_ref: ApiKeysSecretRef | None = None
    """Secret holding the gateway's API keys, one a line (a key, or sha256:<hex> of it, then
    optional id=, models=, rpm=, tpm=, rpm_burst=, tpm_burst=). Mounted into the gateway pods; an
    update is picked up without a restart. Unset, the gateway serves without keys."""
    rate_limit: RateLimit | None = None
    """Per-key limits (token buckets; a key's line in the keys Secret may override them). Shared by
    every gateway replica when gateway.redis is set, per replica otherwise."""
    redis: RedisSpec | None = None
    """Redis that shares the rate limits across gateway replicas."""

    @model_validator(mode="before")
    @classmethod
    def _take_the_old_processes_name(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or data.get("workers") is None:
            return data
        old, new = data["workers"], data.get("processes")
        if new is None:
            return {**data, "processes": old}
        # Every resource created before the rename carries workers: 1, the old schema default
        # the API server stored: beside a processes set since, it is no disagreement.
        if new != old and old != OLD_WORKERS_DEFAULT:
            raise ValueError(
                f"gateway.processes ({new}) and its deprecated name gateway.workers ({old}) disagree: "
                f"set gateway.processes only ({REMOVE_WORKERS.format(name='NAME')})"
            )
        return data


class IngressTLS(SchemaModel):
    secret_name: str = Field(min_length=1)


class IngressSpec(SchemaModel):
    enabled: bool = False
    class_name: str | None = None
    host: str | None = Field(None, pattern=HOSTNAME)
    tls: IngressTLS | None = None
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations for the Ingress, from an allow-list (cert-manager issuers, external-dns,
    timeouts, body size, TLS redirects, source ranges); others are rejected with a condition."""


class VGateDeploymentSpec(SchemaModel):
    models: list[ModelSpec] = Field(
        min_length=1,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Models to serve; each gets its own worker Deployment and Service."""
    worker: WorkerSpec = Field(default_factory=WorkerSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    ingress: IngressSpec = Field(default_factory=IngressSpec)


def gpus_for(model: ModelSpec, worker: WorkerSpec) -> int:
    """GPUs a model's worker pod requests: none for simulated workers, else 1 unless set."""
    if worker.dry_run:
        return 0
    return model.resources.gpus or 1


def parse_spec(name: str, raw: Mapping[str, Any]) -> VGateDeploymentSpec:
    """Validate a resource's spec; raise :class:`InvalidSpecError` with every problem found."""
    try:
        spec = VGateDeploymentSpec.model_validate(dict(raw))
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise InvalidSpecError("; ".join(problems)) from None
    problems = check_spec(name, spec)
    if problems:
        raise InvalidSpecError("; ".join(problems))
    return spec


def gateway_processes(spec: VGateDeploymentSpec) -> int:
    """Gateway serving processes in all, each with its own share of every worker's slots."""
    return max(1, spec.gateway.replicas) * spec.gateway.processes


def per_process(count: int, spec: VGateDeploymentSpec) -> int:
    """Each gateway process's part of ``count`` of a worker's slots, rounded up (at least it)."""
    return math.ceil(count / gateway_processes(spec))


def _check_reserve(where: str, model: ModelSpec, spec: VGateDeploymentSpec) -> list[str]:
    reserve = model.queue.reserve
    if reserve is None:
        return []
    if reserve < 0:
        return [f"{where}: queue.reserve must be >= 0 (0: none), not {reserve}"]
    share, kept = per_process(model.max_num_seqs, spec), per_process(reserve, spec)
    if reserve and kept >= share:
        return [
            f"{where}: queue.reserve ({reserve}) keeps {kept} of the {share} slots each of the "
            f"{gateway_processes(spec)} gateway processes may fill on a worker (maxNumSeqs {model.max_num_seqs}); "
            "a key over its share must keep at least one"
        ]
    return []


def check_spec(name: str, spec: VGateDeploymentSpec) -> list[str]:
    """Cross-field rules the CRD schema cannot express; returns human-readable problems."""
    problems: list[str] = []
    if not re.match(DNS_LABEL, name):
        problems.append(f"resource name {name!r} must be a DNS label (child Services are named after it)")
    seen: set[str] = set()
    for i, model in enumerate(spec.models):
        where = f"models[{i}] ({model.name})"
        if model.name in seen:
            problems.append(f"{where}: duplicate model name")
        seen.add(model.name)
        problems += _check_quantization(where, model)
        if spec.worker.dry_run and model.resources.gpus is not None:
            problems.append(f"{where}: resources.gpus cannot be set with worker.dryRun (simulated workers)")
        problems += _check_adapters(where, model)
        if (model.long_prefill_token_threshold or 0) > model.max_model_len:
            problems.append(
                f"{where}: longPrefillTokenThreshold ({model.long_prefill_token_threshold}) cannot be "
                f"greater than maxModelLen ({model.max_model_len}), as vLLM refuses it"
            )
        problems += _check_reserve(where, model, spec)
        child = worker_name(name, model.name)
        if len(child) > MAX_CHILD_NAME:
            problems.append(f"{where}: child name {child!r} exceeds {MAX_CHILD_NAME} characters")
    problems += _check_adapter_names(spec)
    ingress = spec.ingress
    if ingress.enabled and ingress.tls is not None and not ingress.host:
        problems.append("ingress: tls needs a host")
    refused = sorted(set(ingress.annotations) - ALLOWED_INGRESS_ANNOTATIONS)
    if refused:
        problems.append(
            f"ingress.annotations: {', '.join(refused)} not allowed (snippets and auth overrides could "
            f"bypass the gateway); allowed: {', '.join(sorted(ALLOWED_INGRESS_ANNOTATIONS))}"
        )
    if len(gateway_name(name)) > MAX_CHILD_NAME:
        problems.append(f"resource name {name!r} is too long for its child objects")
    return problems


def _check_adapters(where: str, model: ModelSpec) -> list[str]:
    """An adapter's rank within maxLoraRank, no more pinned adapters than slots, LoRA enabled."""
    if not model.adapters:
        return []
    if model.max_loras is None:
        return [
            f"{where}: adapters need maxLoras (LoRA slots per worker; setting it restarts the workers once)"
        ]
    problems = []
    max_rank = model.max_lora_rank or VLLM_DEFAULT_MAX_LORA_RANK
    for adapter in model.adapters:
        if adapter.rank is not None and adapter.rank > max_rank:
            problems.append(
                f"{where}: adapter {adapter.name!r} has rank {adapter.rank}, above maxLoraRank {max_rank}"
            )
    pinned = [a.name for a in model.adapters if a.min_workers]
    if len(pinned) > model.max_loras:
        problems.append(
            f"{where}: {len(pinned)} adapters have minWorkers > 0 ({', '.join(pinned)}) but a worker has "
            f"{model.max_loras} adapter slots (maxLoras); they cannot all stay loaded"
        )
    if model.max_cpu_loras is not None and model.max_cpu_loras < model.max_loras:
        problems.append(f"{where}: maxCpuLoras ({model.max_cpu_loras}) must be at least maxLoras")
    return problems


def _check_adapter_names(spec: VGateDeploymentSpec) -> list[str]:
    """Adapter names are what clients put in ``model``: none may be a model's or another adapter's."""
    models = {m.name for m in spec.models}
    seen: set[str] = set()
    problems = []
    for model in spec.models:
        for adapter in model.adapters:
            if adapter.name in models:
                problems.append(f"adapter {adapter.name!r} of model {model.name!r} has the name of a model")
            elif adapter.name in seen:
                problems.append(f"adapter {adapter.name!r}: duplicate adapter name")
            seen.add(adapter.name)
    return problems


def _check_quantization(where: str, model: ModelSpec) -> list[str]:
    # A checkpoint's quantization is fixed when it is produced; vLLM fails late (after the
    # download, then crash-loops) when told otherwise, so a mismatch visible in the id is
    # rejected up front. ``auto`` never contradicts: vLLM reads the checkpoint's own config.
    if model.quantization == "auto":
        return []
    lowered = model.model.lower()
    named = [method for method in _CHECKPOINT_METHODS if method in lowered]
    if named and model.quantization not in _CHECKPOINT_METHODS[named[0]]:
        return [
            f"{where}: quantization {model.quantization!r} contradicts {named[0].upper()} model "
            f"{model.model!r} (leave it unset to let vLLM read the checkpoint's method)"
        ]
    # A hub id ("org/name") that names no method is not an AWQ or GPTQ checkpoint by the
    # hub's naming convention; a local path can be anything, so it is left to the worker.
    wanted = next((m for m, ok in _CHECKPOINT_METHODS.items() if model.quantization in ok), None)
    if wanted and not named and _is_hub_id(model.model):
        return [
            f"{where}: quantization {model.quantization!r} needs a checkpoint quantized with {wanted.upper()}, "
            f"but model {model.model!r} is not one (leave it unset to let vLLM read the checkpoint's method)"
        ]
    return []


def _is_hub_id(model: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model) is not None


def deprecations(name: str, spec: VGateDeploymentSpec) -> list[str]:
    """Old field names the spec still uses: each works for one more release, with this warning."""
    gw = spec.gateway
    if gw.workers is None:
        return []
    return [
        f"gateway.workers is deprecated and goes in the next release: set gateway.processes: {gw.processes} "
        f"and remove gateway.workers (resources created before this release carry workers: 1, the old "
        f"default; {REMOVE_WORKERS.format(name=name)})"
    ]


def worker_name(resource: str, model: str) -> str:
    """Name of a model's worker Deployment and Service."""
    return f"{resource}-worker-{model}"


def gateway_name(resource: str) -> str:
    """Name shared by the gateway's Deployment, Service, ConfigMap, RBAC, PDB and Ingress."""
    return f"{resource}-gateway"
