"""The gateway: configuration, identity and RBAC, Deployment, Service, PDB and Ingress."""

from __future__ import annotations

from typing import Any

import yaml

from vgate_operator.builders.common import (
    CONFIG_HASH,
    HTTP_PORT,
    LISTEN_HOST,
    PRE_STOP_SLEEP,
    Manifest,
    Owner,
    container_security_context,
    digest,
    disruption_budget,
    http_probe,
    image,
    metadata,
    pod_security_context,
    pre_stop_sleep,
    selector_labels,
    with_spec_hash,
)
from vgate_operator.spec import VGateDeploymentSpec, gateway_name, per_process, worker_name

#: /metrics, /stats, /docs, /openapi.json: never routed by the Ingress.
INTERNAL_PORT = 8081
CONFIG_DIR = "/etc/vgate"
CONFIG_KEY = "gateway.yaml"
KEYS_DIR = "/etc/vgate/api-keys"
KEYS_FILE = "keys"


def gateway_settings(owner: Owner, spec: VGateDeploymentSpec) -> dict[str, Any]:
    """The gateway's settings file, keyed by ``GatewaySettings`` field names."""
    gw = spec.gateway
    return {
        "host": LISTEN_HOST,
        "port": HTTP_PORT,
        "log_json": True,
        "discovery": "kubernetes",
        "namespace": owner.namespace,
        "services": {m.name: worker_name(owner.name, m.name) for m in spec.models},
        "routing": gw.routing,
        "routing_per_model": {m.name: m.routing for m in spec.models if m.routing},
        "batch_size": gw.batching.batch_size,
        "batch_wait_ms": gw.batching.batch_wait_ms,
        "cache_maxsize": gw.cache.max_size,
        "cache_ttl_s": gw.cache.ttl_seconds,
        "dedup": gw.dedup,
        "queue_policy": gw.queue_policy,
        "internal_port": INTERNAL_PORT,
        "processes": gw.processes,
        **_model_settings(spec),
        **_adapter_settings(spec),
        **_security_settings(owner, spec),
    }


def _adapter_settings(spec: VGateDeploymentSpec) -> dict[str, Any]:
    """The declared LoRA adapters: the gateway loads them where their requests go and routes them."""
    adapters = {
        a.name: {"base": m.name, "source": a.source, "min_workers": a.min_workers}
        for m in spec.models
        for a in m.adapters
    }
    return {"adapters": adapters} if adapters else {}


def _model_settings(spec: VGateDeploymentSpec) -> dict[str, Any]:
    """Every model, and what each gateway replica may send it and queue for it.

    A worker runs ``maxNumSeqs`` requests at once; each serving process of each gateway
    replica counts only its own in-flight requests, so it takes an equal share before it holds
    the rest in its queue.
    """
    return {
        "models": [m.name for m in spec.models],
        "model_settings": {
            m.name: {
                "capacity": per_process(m.max_num_seqs, spec),
                "queue_max_requests": m.queue.max_requests,
                "queue_timeout_s": m.queue.timeout_seconds,
                # Each process keeps its part of the worker's reserve.
                **(
                    {"queue_reserve": per_process(m.queue.reserve, spec)}
                    if m.queue.reserve is not None
                    else {}
                ),
                **(
                    {"queue_prefills_over_share": m.queue.prefills_over_share}
                    if m.queue.prefills_over_share > 0
                    else {}
                ),
                **(
                    {"queue_prefill_free_workers": m.queue.prefill_free_workers}
                    if m.queue.prefill_free_workers > 0
                    else {}
                ),
                **({"max_loras": m.max_loras} if m.max_loras is not None else {}),
                # The workers order their waiting requests by the priority the gateway sends.
                **({"engine_priority": True} if m.scheduling_policy == "priority" else {}),
            }
            for m in spec.models
        },
    }


def _security_settings(owner: Owner, spec: VGateDeploymentSpec) -> dict[str, Any]:
    gw = spec.gateway
    out: dict[str, Any] = {}
    if gw.api_keys_secret_ref is not None:
        out["api_keys_file"] = f"{KEYS_DIR}/{KEYS_FILE}"
    if gw.rate_limit is not None:
        limits = {
            "rate_limit_rpm": gw.rate_limit.requests_per_minute,
            "rate_limit_rpm_burst": gw.rate_limit.burst,
            "rate_limit_tpm": gw.rate_limit.tokens_per_minute,
            "rate_limit_tpm_burst": gw.rate_limit.token_burst,
        }
        out.update({k: v for k, v in limits.items() if v is not None})
    if gw.redis is not None:
        # The URL (and its password) comes from the Secret as VGATE_REDIS_URL, not from here.
        out["redis_failure_mode"] = gw.redis.failure_mode
        out["redis_prefix"] = f"vgate:{owner.namespace}/{owner.name}:"
    return out


def build_gateway_configmap(owner: Owner, spec: VGateDeploymentSpec) -> Manifest:
    text = yaml.safe_dump(gateway_settings(owner, spec), sort_keys=True)
    return with_spec_hash(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(owner, gateway_name(owner.name), "gateway"),
            "data": {CONFIG_KEY: text},
        }
    )


def build_gateway_serviceaccount(owner: Owner) -> Manifest:
    return with_spec_hash(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(owner, gateway_name(owner.name), "gateway"),
            "automountServiceAccountToken": True,
        }
    )


def build_gateway_role(owner: Owner) -> Manifest:
    """Read-only access to EndpointSlices in this namespace: all the gateway's discovery needs."""
    return with_spec_hash(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(owner, gateway_name(owner.name), "gateway"),
            "rules": [
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        }
    )


def build_gateway_rolebinding(owner: Owner) -> Manifest:
    name = gateway_name(owner.name)
    return with_spec_hash(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(owner, name, "gateway"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
        }
    )


def build_gateway_service(owner: Owner) -> Manifest:
    return with_spec_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(owner, gateway_name(owner.name), "gateway"),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(owner, "gateway"),
                "ports": [
                    {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                    {"name": "internal", "port": INTERNAL_PORT, "targetPort": "internal", "protocol": "TCP"},
                ],
            },
        }
    )


def build_gateway_pdb(owner: Owner) -> Manifest:
    return disruption_budget(owner, gateway_name(owner.name), "gateway", selector_labels(owner, "gateway"))


def build_gateway_deployment(owner: Owner, spec: VGateDeploymentSpec, config: Manifest) -> Manifest:
    """Gateway pods; ``config`` is the ConfigMap, whose hash on the template rolls them on change."""
    name = gateway_name(owner.name)
    gw = spec.gateway
    template_meta = {
        "labels": metadata(owner, name, "gateway")["labels"],
        "annotations": {CONFIG_HASH: digest(config["data"])},
    }
    pod: Manifest = {
        "serviceAccountName": name,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": gw.termination_grace_period_seconds,
        "containers": [_gateway_container(spec)],
        "volumes": [
            {"name": "config", "configMap": {"name": name}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    keys = gw.api_keys_secret_ref
    if keys is not None:
        # A whole-volume mount (no subPath): the kubelet swaps in Secret updates, the gateway reloads.
        pod["volumes"].append(
            {
                "name": "api-keys",
                "secret": {"secretName": keys.name, "items": [{"key": keys.key, "path": KEYS_FILE}]},
            }
        )
    if gw.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": ref.name} for ref in gw.image_pull_secrets]
    return with_spec_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(owner, name, "gateway"),
            "spec": {
                "replicas": gw.replicas,
                "selector": {"matchLabels": selector_labels(owner, "gateway")},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {"metadata": template_meta, "spec": pod},
            },
        }
    )


def _gateway_container(spec: VGateDeploymentSpec) -> Manifest:
    gw = spec.gateway
    container: Manifest = {
        "name": "gateway",
        "image": gw.image or image("gateway"),
        "args": ["gateway", "--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "internal", "containerPort": INTERNAL_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": http_probe("/ready", period=2, failures=2),
        "livenessProbe": http_probe("/health", period=10, failures=3, timeout=5),
        # Keep serving while the endpoint removal propagates to kube-proxy and ingress controllers.
        "lifecycle": pre_stop_sleep(PRE_STOP_SLEEP),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": container_security_context(read_only_root=True),
    }
    if gw.api_keys_secret_ref is not None:
        container["volumeMounts"].append({"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True})
    if gw.redis is not None:
        # The only setting passed as an environment variable: the URL holds a password.
        ref = gw.redis.url_secret_ref
        container["env"] = [
            {"name": "VGATE_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        ]
    resources = gateway_resources(spec)
    if resources:
        container["resources"] = resources
    if gw.image_pull_policy:
        container["imagePullPolicy"] = gw.image_pull_policy
    return container


def gateway_resources(spec: VGateDeploymentSpec) -> dict[str, dict[str, Any]]:
    """The container's resources: with several serving processes, a core requested for each.

    A CPU request set in the resource wins; the default one (a quarter core, enough for
    one process at modest load) grows to one core per process.
    """
    gw = spec.gateway
    resources = gw.resources.model_dump(exclude_defaults=False)
    explicit_cpu = "resources" in gw.model_fields_set and "cpu" in gw.resources.requests
    if gw.processes > 1 and not explicit_cpu:
        resources["requests"] = {**resources.get("requests", {}), "cpu": str(gw.processes)}
    return {k: v for k, v in resources.items() if v}


def build_ingress(owner: Owner, spec: VGateDeploymentSpec) -> Manifest:
    """HTTP(S) entry to the gateway's OpenAI API (``/v1`` only); built when ``ingress.enabled``."""
    ing = spec.ingress
    name = gateway_name(owner.name)
    meta = metadata(owner, name, "gateway")
    if ing.annotations:
        # Server-side apply removes an annotation this manager set once it is no longer sent.
        meta["annotations"] = dict(ing.annotations)
    rule: Manifest = {
        "http": {
            "paths": [
                {
                    "path": "/v1",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": name, "port": {"name": "http"}}},
                }
            ]
        }
    }
    if ing.host:
        rule["host"] = ing.host
    ingress_spec: Manifest = {"rules": [rule]}
    if ing.class_name:
        ingress_spec["ingressClassName"] = ing.class_name
    if ing.tls is not None:
        ingress_spec["tls"] = [{"hosts": [ing.host], "secretName": ing.tls.secret_name}]
    return with_spec_hash(
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": ingress_spec}
    )
