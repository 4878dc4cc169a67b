"""The ``models[].autoscaling`` and ``models[].queue`` blocks of a VGateDeployment.

Defaults follow the anchors (Knative's KPA, AIBrix's KPA, production-stack's KEDA setup)
adjusted for GPUs: a worker's cold start is tens of seconds to minutes and a GPU is
expensive to flap, so scaling down waits far longer than scaling up. docs/autoscaling.md
justifies each number.
"""

from __future__ import annotations

import math
from typing import Literal
from urllib.parse import urlsplit

from vgate_operator.schema import SchemaModel

#: At most this factor of the ready replicas per decision (AIBrix: 2x per step).
MAX_SCALE_UP_RATE = 2.0
#: The longest stabilization window an HorizontalPodAutoscaler accepts (engine keda).
HPA_MAX_WINDOW_S = 3600
#: The most workers one model may have (as ``models[].replicas``).
MAX_REPLICAS = 100
#: At most this factor fewer replicas per decision (Knative and AIBrix: 2).
MAX_SCALE_DOWN_RATE = 2.0


class KedaSpec(SchemaModel):
    """What KEDA needs to read the gateways' load: a Prometheus that scrapes them."""

    prometheus_address: str | None = None
    """Prometheus that scrapes every gateway's /metrics on its internal port (the chart's ServiceMonitor does), e.g. http://prometheus-operated.monitoring.svc:9090."""
    polling_interval_seconds: int = 15
    """How often KEDA queries it (production-stack: 15 s)."""


class AutoscalingSpec(SchemaModel):
    """Scale a model's workers on its gateways' load: requests in flight plus queued."""

    # No bounds here: a bad value is reported by check_autoscaling as an InvalidSpec condition
    # while the rest of the resource is still reconciled (a pydantic error would stop it all).
    min_replicas: int = 1
    """0 lets the model scale to zero: the gateways queue its requests while a worker starts."""
    max_replicas: int | None = None
    """The budget of GPUs this model may take: required (the operator reports it missing as InvalidSpec)."""
    target_per_replica: float | None = None
    """Load (requests in flight + queued) one replica should carry; unset: the model's maxNumSeqs, the batch a worker runs at once, so the fleet grows when requests start to wait."""
    stable_window_seconds: float = 60.0
    panic_window_seconds: float = 6.0
    panic_threshold: float = 2.0
    """Panic when the panic window asks for this many times the replicas asked for (ready or starting)."""
    scale_down_delay_seconds: float = 300.0
    scale_to_zero_delay_seconds: float = 600.0
    engine: Literal["builtin", "keda"] = "builtin"
    keda: KedaSpec | None = None


class QueueSpec(SchemaModel):
    """How the gateways hold a model's requests that no worker can take yet."""

    max_requests: int = 1000
    timeout_seconds: float = 300.0
    """Must outlast a GPU worker's cold start, or requests waiting on a scale-from-zero time out."""
    prefills_over_share: int = 0
    """Streamed requests of a key over its share that each gateway process may have awaiting their first token on one worker, so a flood's long prompts do not fill every engine step (0: no limit)."""
    prefill_free_workers: int = 0
    """Workers kept free of the prefills of a key that floods (sends more than it is served) while other keys are active: their prompts go there, and their first token does not wait for the flood's prefills. The flood is served by the other workers (0: none)."""
    reserve: int | None = None
    """Slots of each worker that a key over its share of the model's slots may not fill while other keys are active, kept for keys within their share (a light tenant is not queued behind a flood). Unset: an eighth of what each gateway process may send a worker; 0: none."""


def check_autoscaling(where: str, auto: AutoscalingSpec) -> list[str]:
    """Every problem of one model's autoscaling block, human-readable (empty: valid)."""
    problems: list[str] = []
    at = f"{where}.autoscaling"
    if auto.max_replicas is None:
        problems.append(f"{at}: maxReplicas is required (the most workers this model may take)")
    elif not 1 <= auto.max_replicas <= MAX_REPLICAS:
        problems.append(f"{at}: maxReplicas must be between 1 and {MAX_REPLICAS}, not {auto.max_replicas}")
    if auto.min_replicas < 0:
        problems.append(f"{at}: minReplicas must be >= 0, not {auto.min_replicas}")
    elif auto.max_replicas is not None and auto.min_replicas > auto.max_replicas:
        problems.append(f"{at}: minReplicas ({auto.min_replicas}) exceeds maxReplicas ({auto.max_replicas})")
    target = auto.target_per_replica
    if target is not None and (not math.isfinite(target) or target <= 0):
        problems.append(f"{at}: targetPerReplica must be > 0, not {target}")
    for name, value in (
        ("stableWindowSeconds", auto.stable_window_seconds),
        ("panicWindowSeconds", auto.panic_window_seconds),
        ("scaleDownDelaySeconds", auto.scale_down_delay_seconds),
        ("scaleToZeroDelaySeconds", auto.scale_to_zero_delay_seconds),
    ):
        if not math.isfinite(value) or value < 0:
            problems.append(f"{at}: {name} must be a finite number of seconds >= 0, not {value}")
    if auto.stable_window_seconds <= 0:
        problems.append(f"{at}: stableWindowSeconds must be > 0 (the load is averaged over it)")
    if 0 <= auto.stable_window_seconds < auto.panic_window_seconds:
        problems.append(
            f"{at}: panicWindowSeconds ({auto.panic_window_seconds:g}) must not exceed "
            f"stableWindowSeconds ({auto.stable_window_seconds:g})"
        )
    if not math.isfinite(auto.panic_threshold) or auto.panic_threshold < 1:
        problems.append(f"{at}: panicThreshold must be a ratio >= 1, not {auto.panic_threshold}")
    problems += _check_engine(at, auto)
    return problems


def _check_engine(at: str, auto: AutoscalingSpec) -> list[str]:
    keda = auto.keda
    if auto.engine == "builtin":
        return [f"{at}: keda is set but engine is builtin (set engine: keda to use it)"] if keda else []
    if keda is None or not keda.prometheus_address:
        return [
            f"{at}: engine keda needs keda.prometheusAddress, a Prometheus that scrapes the gateways' "
            "/metrics on their internal port (KEDA reads the load from it)"
        ]
    problems = []
    parts = urlsplit(keda.prometheus_address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(
            f"{at}: keda.prometheusAddress {keda.prometheus_address!r} must be an http:// or https:// URL with a host"
        )
    if auto.scale_down_delay_seconds > HPA_MAX_WINDOW_S:
        problems.append(
            f"{at}: scaleDownDelaySeconds must be at most {HPA_MAX_WINDOW_S} with engine keda (the HPA's "
            f"stabilization window), not {auto.scale_down_delay_seconds:g}"
        )
    if not 1 <= keda.polling_interval_seconds <= 3600:
        problems.append(
            f"{at}: keda.pollingIntervalSeconds must be between 1 and 3600, not {keda.polling_interval_seconds}"
        )
    return problems


def check_queue(where: str, queue: QueueSpec) -> list[str]:
    """Problems of one model's queue block (empty: valid)."""
    problems = []
    if queue.max_requests < 0:
        problems.append(f"{where}.queue: maxRequests must be >= 0 (0: never queue), not {queue.max_requests}")
    if not math.isfinite(queue.timeout_seconds) or queue.timeout_seconds <= 0:
        problems.append(f"{where}.queue: timeoutSeconds must be > 0, not {queue.timeout_seconds}")
    if queue.prefills_over_share < 0:
        problems.append(
            f"{where}.queue: prefillsOverShare must be >= 0 (0: no limit), not {queue.prefills_over_share}"
        )
    if queue.prefill_free_workers < 0:
        problems.append(
            f"{where}.queue: prefillFreeWorkers must be >= 0 (0: none), not {queue.prefill_free_workers}"
        )
    return problems


def target_for(auto: AutoscalingSpec, max_num_seqs: int) -> float:
    """The load one replica should carry: the set target, else the model's batch size."""
    return auto.target_per_replica if auto.target_per_replica is not None else float(max_num_seqs)
