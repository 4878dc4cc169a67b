"""Shared pieces of every child object: names, labels, owner references, hashes, security."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from vgate_operator import __version__

GROUP = "vgate.io"
VERSION = "v1alpha1"
KIND = "VGateDeployment"
PLURAL = "vgatedeployments"

#: Hash of the desired state of a child object, compared before any write.
SPEC_HASH = "vgate.io/spec-hash"
#: Hash of the gateway configuration, on its pod template so a change rolls the pods.
CONFIG_HASH = "vgate.io/config-hash"
MODEL_LABEL = "vgate.io/model"
MANAGED_BY = "vgate-operator"
#: uid/gid of the ``vgate`` user in the V-Gate images.
RUN_AS = 10001
#: The OpenAI API port of every pod the operator runs, gateway and workers (port name ``http``).
HTTP_PORT = 8000
#: Listen address of every pod's server: its pod IP, whatever it is.
LISTEN_HOST = "0.0.0.0"
#: Seconds a terminating pod keeps serving while endpoint removal reaches every client.
PRE_STOP_SLEEP = 5

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The VGateDeployment that children belong to."""

    name: str
    namespace: str
    uid: str


def image(component: str) -> str:
    """Default image of a component, tagged with this operator's version."""
    return f"ghcr.io/vgate/{component}:{__version__}"


def selector_labels(owner: Owner, component: str) -> dict[str, str]:
    """Labels that select a component's pods; stable across upgrades (selectors are immutable)."""
    return {
        "app.kubernetes.io/name": "vgate",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
    }


def labels(owner: Owner, component: str) -> dict[str, str]:
    """The recommended ``app.kubernetes.io`` labels every child carries."""
    return {
        **selector_labels(owner, component),
        "app.kubernetes.io/part-of": "vgate",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/version": __version__,
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    """Controller reference: deleting the VGateDeployment garbage-collects the child."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
    }


def metadata(owner: Owner, name: str, component: str, extra_labels: dict[str, str] | None = None) -> Manifest:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**labels(owner, component), **(extra_labels or {})},
        "ownerReferences": [owner_reference(owner)],
    }


def digest(data: Any) -> str:
    """Stable short hash of JSON-able data (key order does not matter)."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def with_spec_hash(manifest: Manifest) -> Manifest:
    """Stamp the manifest with the hash of everything but that annotation."""
    manifest["metadata"].setdefault("annotations", {})[SPEC_HASH] = digest(manifest)
    return manifest


def pod_security_context() -> Manifest:
    # Pod Security "restricted": non-root as the images' own user (uid 10001, whose HOME
    # holds vLLM's caches), stated explicitly so kubelet can verify runAsNonRoot for any
    # image; fsGroup makes the cache volume writable. OnRootMismatch: the kubelet changes
    # ownership only when the volume's root is not already ours, rather than walking a
    # model PVC of many gigabytes on every pod start.
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(read_only_root: bool) -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def http_probe(path: str, period: int, failures: int, timeout: int = 2) -> Manifest:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def pre_stop_sleep(seconds: int) -> Manifest:
    """Keep serving while the endpoint removal reaches every client (the ``sleep`` action
    needs no shell or binary in the image; Kubernetes 1.30+)."""
    return {"preStop": {"sleep": {"seconds": seconds}}}


def disruption_budget(owner: Owner, name: str, component: str, selector: dict[str, str]) -> Manifest:
    """At most one pod of ``selector`` evicted at a time.

    maxUnavailable rather than minAvailable: a single replica must not block node drains.
    ``AlwaysAllow``: a pod that is not ready (crash-looping, still loading) can always be
    evicted, so a broken rollout never makes ``kubectl drain`` hang.
    """
    extra = {k: v for k, v in selector.items() if k not in labels(owner, component)}
    return with_spec_hash(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(owner, name, component, extra or None),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": dict(selector)},
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        }
    )


def quantity_map(values: dict[str, int | str | None]) -> dict[str, int | str]:
    return {k: v for k, v in values.items() if v is not None}
