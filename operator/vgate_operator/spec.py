"""Typed view of a VGateDeployment: pydantic models of the CRD spec, plus cross-field checks.

The CRD's OpenAPI schema already rejects malformed objects at admission; these models
add the rules a schema cannot express (duplicate model names, a quantization that
contradicts the model id, GPUs requested for simulated workers, child names that
would exceed Kubernetes' limits). Anything they reject is an :class:`InvalidSpecError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

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
Quantity = int | str


class InvalidSpecError(ValueError):
    """The resource's spec cannot be reconciled as written; the message says why."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ModelResources(_Model):
    #: ``nvidia.com/gpu`` limit and vLLM's tensor-parallel size; unset means 1 (0 with dryRun).
    gpus: int | None = Field(None, ge=1, le=16)
    cpu: Quantity | None = None
    memory: Quantity | None = None


class ModelSpec(_Model):
    name: str = Field(pattern=DNS_LABEL, max_length=40)
    model: str = Field(DEFAULT_MODEL, min_length=1)
    quantization: Quantization = "auto"
    replicas: int = Field(1, ge=0, le=100)
    max_model_len: int = Field(4096, ge=16)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_num_seqs: int = Field(64, ge=1)
    #: Tokens one engine step may process; unset: vLLM's default for the hardware.
    max_num_batched_tokens: int | None = Field(None, ge=16)
    #: Split long prefills across steps; unset: vLLM's default (on).
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool = True
    #: ``fp8`` halves the KV cache's memory; unset: the model's dtype.
    kv_cache_dtype: Literal["auto", "fp8"] | None = None
    engine_args: list[str] = Field(default_factory=list)
    resources: ModelResources = Field(default_factory=ModelResources)
    #: Per-model override of ``gateway.routing``.
    routing: Routing | None = None


class SecretKeyRef(_Model):
    name: str = Field(min_length=1)
    key: str = Field("token", min_length=1)


class ModelCache(_Model):
    #: An existing PersistentVolumeClaim; unset means an emptyDir per pod.
    existing_claim: str | None = None
    size_limit: Quantity | None = "20Gi"


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class LocalObjectReference(_Model):
    name: str = Field(min_length=1)


class TopologySpread(_Model):
    """A topology spread constraint over one model's worker pods (the selector is filled in)."""

    max_skew: int = Field(1, ge=1)
    topology_key: str = Field(min_length=1)
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = "ScheduleAnyway"


class WorkerSpec(_Model):
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    #: RuntimeClass of the worker pods (e.g. ``nvidia`` where the GPU runtime is not the default).
    runtime_class_name: str | None = None
    #: Unset: spread each model's pods over nodes where possible; ``[]``: no constraint.
    topology_spread_constraints: list[TopologySpread] | None = None
    dry_run: bool = False
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    hf_token_secret_ref: SecretKeyRef | None = None
    model_cache: ModelCache = Field(default_factory=ModelCache)
    shm_size: Quantity = "1Gi"


class Batching(_Model):
    batch_size: int = Field(8, ge=1, le=256)
    batch_wait_ms: float = Field(3.0, ge=0, le=1000)


class Cache(_Model):
    max_size: int = Field(1000, ge=0)
    ttl_seconds: float = Field(600.0, gt=0)


class RateLimit(_Model):
    """Per-key limits, token buckets; a key's line in the keys Secret may override them."""

    requests_per_minute: int | None = Field(None, ge=1)
    #: Requests a key may make at once (default: one minute's worth).
    burst: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    token_burst: int | None = Field(None, ge=1)


class ApiKeysSecretRef(_Model):
    name: str = Field(min_length=1)
    key: str = Field("keys", min_length=1)


class RedisUrlSecretRef(_Model):
    name: str = Field(min_length=1)
    key: str = Field("url", min_length=1)


class RedisSpec(_Model):
    """The Redis that shares rate limits across gateway replicas."""

    url_secret_ref: RedisUrlSecretRef
    failure_mode: Literal["open", "closed"] = "open"


class ResourceRequirements(_Model):
    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class GatewaySpec(_Model):
    replicas: int = Field(2, ge=0, le=100)
    #: Serving processes in each gateway pod (VGATE_WORKERS), each about one core under load.
    workers: int = Field(1, ge=1, le=64)
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    batching: Batching = Field(default_factory=Batching)
    cache: Cache = Field(default_factory=Cache)
    dedup: bool = True
    routing: Routing = "prefix-aware"
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "250m", "memory": "256Mi"}, limits={"memory": "1Gi"}
        )
    )
    #: Seconds a terminating gateway pod has to finish in-flight streams.
    termination_grace_period_seconds: int = Field(120, ge=1, le=3600)
    #: The Secret holding the API keys, mounted into the gateway pods (unset: no keys).
    api_keys_secret_ref: ApiKeysSecretRef | None = None
    rate_limit: RateLimit | None = None
    redis: RedisSpec | None = None


class IngressTLS(_Model):
    secret_name: str = Field(min_length=1)


class IngressSpec(_Model):
    enabled: bool = False
    class_name: str | None = None
    host: str | None = None
    tls: IngressTLS | None = None
    annotations: dict[str, str] = Field(default_factory=dict)


class VGateDeploymentSpec(_Model):
    models: list[ModelSpec] = Field(min_length=1)
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
        child = worker_name(name, model.name)
        if len(child) > MAX_CHILD_NAME:
            problems.append(f"{where}: child name {child!r} exceeds {MAX_CHILD_NAME} characters")
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


def worker_name(resource: str, model: str) -> str:
    """Name of a model's worker Deployment and Service."""
    return f"{resource}-worker-{model}"


def gateway_name(resource: str) -> str:
    """Name shared by the gateway's Deployment, Service, ConfigMap, RBAC, PDB and Ingress."""
    return f"{resource}-gateway"
