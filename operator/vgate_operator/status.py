"""Status of a VGateDeployment, computed from its spec and the live Deployments.

Conditions follow the Kubernetes API conventions: ``type``, ``status``, ``reason``,
``message``, ``lastTransitionTime`` (kept while the status value is unchanged) and
``observedGeneration``. Pure functions: the caller supplies the previous status and
the clock, and writes only what changed.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from vgate_operator.autoscale.checks import autoscaling_problems
from vgate_operator.builders.common import HTTP_PORT, Manifest, Owner
from vgate_operator.schema import SchemaModel
from vgate_operator.spec import (
    INT64,
    ModelSpec,
    VGateDeploymentSpec,
    deprecations,
    gateway_name,
    worker_name,
)


class Condition(SchemaModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(None, json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, json_schema_extra=INT64)


class ModelStatus(SchemaModel):
    name: str | None = None
    replicas: int | None = None
    ready_replicas: int | None = None


class AdapterStatus(SchemaModel):
    name: str | None = None
    model: str | None = None
    """The base model the adapter runs on."""
    loaded_workers: int | None = None
    """Workers that have the adapter loaded, as the gateway last saw them (absent: unknown)."""
    min_workers: int | None = None


# The status this module writes; the CRD's status schema is generated from it (crd.py).
class VGateDeploymentStatus(SchemaModel):
    """Observed state, written by the operator: conditions, replica counts, where to reach the gateway."""

    observed_generation: int | None = Field(None, json_schema_extra=INT64)
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    models: list[ModelStatus] = Field(default_factory=list)
    adapters: list[AdapterStatus] = Field(default_factory=list)
    """Each declared LoRA adapter and how many workers have it loaded."""
    ready_workers: str | None = None
    model_replicas: str | None = None
    """Each model's ready/desired workers, e.g. qwen=1/2 llama=0/0."""
    ready_gateways: str | None = None
    gateway_url: str | None = Field(None, alias="gatewayURL")
    ingress_host: str | None = None
    kopf: dict[str, Any] | None = Field(
        None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """The operator framework's own progress bookkeeping."""


CONDITION_TYPES = ("Ready", "WorkersReady", "GatewayReady", "Degraded")
#: Present only while the spec uses an old field name (True, reason ``DeprecatedFields``).
DEPRECATED = "Deprecated"
#: Status keys this operator owns (kopf keeps its own bookkeeping beside them).
OWNED_KEYS = tuple(
    field.alias or name for name, field in VGateDeploymentStatus.model_fields.items() if name != "kopf"
)


#: Why a Deployment's rollout is not complete, most urgent first.
FAILURES = ("ReplicaFailure", "ProgressDeadlineExceeded")
WAITING = (
    "DeploymentMissing",
    "RolloutPending",
    "RolloutInProgress",
    "OldReplicasTerminating",
    "WaitingForAvailable",
)


@dataclass(frozen=True)
class Replicas:
    """One Deployment as its controller reports it: pod counts and whether its rollout is done."""

    desired: int
    ready: int
    #: ``RolloutComplete``, or why not (one of :data:`FAILURES` or :data:`WAITING`).
    reason: str = "RolloutComplete"
    message: str = ""

    @property
    def complete(self) -> bool:
        return self.reason == "RolloutComplete"

    def __str__(self) -> str:
        return f"{self.ready}/{self.desired}"


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def replicas_of(deployment: Manifest | None, desired: int) -> Replicas:
    """Counts and rollout state from the Deployment controller's status (as ``kubectl rollout status``).

    Complete only when the controller has seen the current generation, every replica runs
    the current template, no old replica is left and all of them are available: right after
    a change the old pods are still ready, but the rollout is not done.
    """
    if deployment is None:
        return Replicas(desired, 0, "DeploymentMissing", "the Deployment does not exist yet")
    status = deployment.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    want = int((deployment.get("spec") or {}).get("replicas", desired))
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    failure = conditions.get("ReplicaFailure") or {}
    if failure.get("status") == "True":
        return Replicas(desired, ready, "ReplicaFailure", str(failure.get("message") or ""))
    progressing = conditions.get("Progressing") or {}
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Replicas(desired, ready, "ProgressDeadlineExceeded", str(progressing.get("message") or ""))
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return Replicas(
            desired, ready, "RolloutPending", "the Deployment controller has not acted on the change yet"
        )
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < want:
        return Replicas(desired, ready, "RolloutInProgress", f"{updated} of {want} replicas updated")
    if total > updated:
        return Replicas(
            desired, ready, "OldReplicasTerminating", f"{total - updated} old replicas pending termination"
        )
    if available < updated:
        return Replicas(
            desired, ready, "WaitingForAvailable", f"{available} of {updated} updated replicas available"
        )
    return Replicas(desired, ready)


def desired_replicas(model: ModelSpec, deployment: Manifest | None) -> int:
    """The replicas a model should have: its spec's, or with autoscaling the autoscaler's choice
    (the Deployment's ``spec.replicas``, which the operator leaves to it)."""
    if model.autoscaling is None:
        return model.replicas
    spec = (deployment or {}).get("spec") or {}
    return int(spec.get("replicas", 1))


def _worst(parts: Mapping[str, Replicas]) -> Replicas | None:
    """The most urgent incomplete rollout among ``parts``, or None when all are complete."""
    pending = [r for r in parts.values() if not r.complete]
    order = (*FAILURES, *WAITING)
    return min(pending, key=lambda r: order.index(r.reason), default=None)


def _problems(parts: Mapping[str, Replicas]) -> str:
    return "; ".join(f"{name}: {r.reason}: {r.message}" for name, r in parts.items() if not r.complete)


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
        kept = old is not None and old.get("status") == cond["status"] and old.get("lastTransitionTime")
        merged.append({**cond, "lastTransitionTime": kept or now})
    return merged


def healthy_status(
    owner: Owner, spec: VGateDeploymentSpec, generation: int, live: Mapping[tuple[str, str], Manifest | None]
) -> dict[str, Any]:
    """Status after a successful apply: replica counts and the four conditions.

    ``Ready`` only when every rollout is complete; otherwise its reason is the most urgent
    rollout state (``ReplicaFailure`` and ``ProgressDeadlineExceeded`` before the waiting ones)
    and its message names each Deployment that is not done and why.
    """
    models = {}
    for m in spec.models:
        deployment = live.get(("Deployment", worker_name(owner.name, m.name)))
        models[m.name] = replicas_of(deployment, desired_replicas(m, deployment))
    gateway = replicas_of(live.get(("Deployment", gateway_name(owner.name))), spec.gateway.replicas)
    workers = Replicas(sum(r.desired for r in models.values()), sum(r.ready for r in models.values()))
    parts = {**{f"worker {name}": r for name, r in models.items()}, "gateway": gateway}
    worst_worker = _worst(models)
    worst = _worst(parts)
    workers_ok = worst_worker is None
    ready = worst is None
    # Serving, but below the requested capacity: every model and the gateway have a ready pod
    # (a model scaled to zero on purpose serves too: the gateways queue its requests).
    serving = gateway.ready > 0 and all(r.ready > 0 or r.desired == 0 for r in models.values())
    below = workers.ready < workers.desired or gateway.ready < gateway.desired
    degraded = serving and below
    conditions = [
        _condition(
            "Ready",
            ready,
            "Ready" if worst is None else worst.reason,
            f"all rollouts complete: workers {workers}, gateway {gateway} ready"
            if ready
            else _problems(parts),
            generation,
        ),
        _condition(
            "WorkersReady",
            workers_ok,
            "AllWorkersReady" if worst_worker is None else worst_worker.reason,
            f"{workers} workers ready"
            + ("" if workers_ok else f"; {_problems({n: r for n, r in parts.items() if n != 'gateway'})}"),
            generation,
        ),
        _condition(
            "GatewayReady",
            gateway.complete,
            "GatewayReady" if gateway.complete else gateway.reason,
            f"{gateway} gateway replicas ready" + ("" if gateway.complete else f"; {gateway.message}"),
            generation,
        ),
        _condition(
            "Degraded",
            degraded,
            "ReducedCapacity" if degraded else ("AsExpected" if serving or ready else "NotServing"),
            "serving below the requested replicas" if degraded else "",
            generation,
        ),
    ]
    old_names = deprecations(owner.name, spec)
    if old_names:
        conditions.append(_condition(DEPRECATED, True, "DeprecatedFields", "; ".join(old_names), generation))
    invalid = autoscaling_problems(spec)
    if invalid:
        # Everything else was applied; the Ready condition says what was not (replicas held).
        conditions[0] = _condition("Ready", False, "InvalidSpec", "; ".join(invalid), generation)
    return {
        "observedGeneration": generation,
        "conditions": conditions,
        "models": [{"name": n, "replicas": r.desired, "readyReplicas": r.ready} for n, r in models.items()],
        "readyWorkers": str(workers),
        "modelReplicas": " ".join(f"{n}={r}" for n, r in models.items()),
        "readyGateways": str(gateway),
        "gatewayURL": f"http://{gateway_name(owner.name)}.{owner.namespace}.svc:{HTTP_PORT}",
        "ingressHost": (spec.ingress.host or "") if spec.ingress.enabled else "",
    }


def adapter_status(
    spec: VGateDeploymentSpec, seen: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """Each declared adapter and its loaded workers, from the ``adapters`` sections of the
    gateways' ``/stats`` (the most any gateway saw; None when none could be read: the counts
    are left out)."""
    out = []
    for model in spec.models:
        for adapter in model.adapters:
            row: dict[str, Any] = {
                "name": adapter.name,
                "model": model.name,
                "minWorkers": adapter.min_workers,
            }
            counts = [
                len(entry["loaded_on"])
                for stats in seen or ()
                if isinstance(entry := stats.get(adapter.name), Mapping)
                and isinstance(entry.get("loaded_on"), list)
            ]
            if counts:
                row["loadedWorkers"] = max(counts)
            out.append(row)
    return out


def new_deprecation(previous: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """The ``Deprecated`` condition's message when ``new`` brings it or changes it, else None:
    worth one log line, not one per resync."""

    def message(status: Mapping[str, Any]) -> str | None:
        found = [c for c in status.get("conditions") or [] if c.get("type") == DEPRECATED]
        return str(found[0].get("message")) if found else None

    now = message(new)
    return now if now is not None and now != message(previous) else None


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
