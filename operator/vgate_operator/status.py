"""Status of a VGateDeployment, computed from its spec and the live Deployments.

Conditions follow the Kubernetes API conventions: ``type``, ``status``, ``reason``,
``message``, ``lastTransitionTime`` (kept while the status value is unchanged) and
``observedGeneration``. Pure functions: the caller supplies the previous status and
the clock, and writes only what changed.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vgate_operator.builders.common import Manifest, Owner
from vgate_operator.builders.gateway import PORT
from vgate_operator.spec import VGateDeploymentSpec, gateway_name, worker_name

CONDITION_TYPES = ("Ready", "WorkersReady", "GatewayReady", "Degraded")
#: Status keys this operator owns (kopf keeps its own bookkeeping beside them).
OWNED_KEYS = (
    "observedGeneration", "conditions", "models", "readyWorkers", "readyGateways", "gatewayURL", "ingressHost",
)  # fmt: skip


@dataclass(frozen=True)
class Replicas:
    desired: int
    ready: int

    @property
    def complete(self) -> bool:
        return self.ready >= self.desired

    def __str__(self) -> str:
        return f"{self.ready}/{self.desired}"


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def replicas_of(deployment: Manifest | None, desired: int) -> Replicas:
    """Ready replicas as reported by the Deployment controller (0 until it reports)."""
    status = (deployment or {}).get("status") or {}
    return Replicas(desired=desired, ready=int(status.get("readyReplicas") or 0))


def _condition(kind: str, ok: bool | None, reason: str, message: str, generation: int) -> dict[str, Any]:
    value = "Unknown" if ok is None else ("True" if ok else "False")
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def merge_conditions(
    previous: list[Mapping[str, Any]], new: list[dict[str, Any]], now: str
) -> list[dict[str, Any]]:
    """Carry ``lastTransitionTime`` over for conditions whose status did not change."""
    before = {c.get("type"): c for c in previous or []}
    merged = []
    for cond in new:
        old = before.get(cond["type"])
        same = old is not None and old.get("status") == cond["status"] and old.get("lastTransitionTime")
        merged.append({**cond, "lastTransitionTime": old["lastTransitionTime"] if same else now})
    return merged


def healthy_status(
    owner: Owner, spec: VGateDeploymentSpec, generation: int, live: Mapping[tuple[str, str], Manifest]
) -> dict[str, Any]:
    """Status after a successful apply: replica counts and the four conditions."""
    models = {
        m.name: replicas_of(live.get(("Deployment", worker_name(owner.name, m.name))), m.replicas)
        for m in spec.models
    }
    gateway = replicas_of(live.get(("Deployment", gateway_name(owner.name))), spec.gateway.replicas)
    workers = Replicas(sum(r.desired for r in models.values()), sum(r.ready for r in models.values()))
    waiting = ", ".join(f"{name} {r}" for name, r in models.items() if not r.complete)
    workers_ok = all(r.complete for r in models.values())
    # Serving, but below the requested capacity: every model and the gateway have a ready pod.
    serving = gateway.ready > 0 and all(r.ready > 0 for r in models.values())
    degraded = serving and not (workers_ok and gateway.complete)
    ready = workers_ok and gateway.complete
    conditions = [
        _condition(
            "Ready",
            ready,
            "Ready" if ready else "NotReady",
            _ready_message(ready, workers, gateway),
            generation,
        ),
        _condition(
            "WorkersReady",
            workers_ok,
            "AllWorkersReady" if workers_ok else "WorkersNotReady",
            f"{workers} workers ready" + (f"; waiting: {waiting}" if waiting else ""),
            generation,
        ),
        _condition(
            "GatewayReady",
            gateway.complete,
            "GatewayReady" if gateway.complete else "GatewayNotReady",
            f"{gateway} gateway replicas ready",
            generation,
        ),
        _condition(
            "Degraded",
            degraded,
            "ReducedCapacity" if degraded else ("AsExpected" if ready else "NotServing"),
            "serving below the requested replicas" if degraded else "",
            generation,
        ),
    ]
    return {
        "observedGeneration": generation,
        "conditions": conditions,
        "models": [{"name": n, "replicas": r.desired, "readyReplicas": r.ready} for n, r in models.items()],
        "readyWorkers": str(workers),
        "readyGateways": str(gateway),
        "gatewayURL": f"http://{gateway_name(owner.name)}.{owner.namespace}.svc:{PORT}",
        "ingressHost": (spec.ingress.host or "") if spec.ingress.enabled else "",
    }


def _ready_message(ready: bool, workers: Replicas, gateway: Replicas) -> str:
    if ready:
        return "all workers and gateway replicas are ready"
    return f"waiting for pods: workers {workers}, gateway {gateway}"


def failed_status(previous: Mapping[str, Any], reason: str, message: str, generation: int) -> dict[str, Any]:
    """Status when the spec is invalid or the API refused a write: Ready=False with the reason.

    ``observedGeneration`` stays where it was: this generation has not been applied.
    """
    old = {c.get("type"): c for c in previous.get("conditions") or []}
    conditions = [_condition("Ready", False, reason, message, generation)]
    for kind in CONDITION_TYPES[1:]:
        if kind in old:
            conditions.append({k: v for k, v in old[kind].items() if k != "lastTransitionTime"})
        else:
            conditions.append(_condition(kind, None, reason, "not reconciled yet", generation))
    return {**{k: previous[k] for k in OWNED_KEYS if k in previous}, "conditions": conditions}


def status_patch(previous: Mapping[str, Any], new: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The owned status keys whose values change; empty when nothing does (no write)."""
    full = {**new, "conditions": merge_conditions(previous.get("conditions") or [], new["conditions"], now)}
    return {k: v for k, v in full.items() if previous.get(k) != v}
