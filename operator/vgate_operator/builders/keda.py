"""``autoscaling.engine: keda``: a KEDA ScaledObject per model, on the same signal as the builtin loop.

KEDA's ``prometheus`` scaler reads the load, not its ``metrics-api`` scaler: the metrics-api
scaler fetches one URL, which behind the gateway Service is one gateway replica's view,
while Prometheus has every replica's (and, in multiprocess mode, every serving process's)
series and sums them. The query is the stable window's average of requests queued plus in
flight, over this resource's gateway Service; HPA divides it by ``targetPerReplica``.

How the settings map (docs/autoscaling.md): ``minReplicas``/``maxReplicas`` to
``minReplicaCount``/``maxReplicaCount``; ``scaleToZeroDelaySeconds`` to ``cooldownPeriod`` (KEDA
waits that long after the last active poll before going to zero); ``scaleDownDelaySeconds``
to the HPA's scale-down stabilization window (it follows the highest recommendation of that
window, as the builtin loop does); scale-up at most doubles per step, as the builtin loop.
HPA has no panic mode: ``panicWindowSeconds`` and ``panicThreshold`` do not apply.
"""

from __future__ import annotations

import math

from vgate_operator.autoscale.spec import MAX_SCALE_UP_RATE, AutoscalingSpec, target_for
from vgate_operator.builders.common import MODEL_LABEL, Manifest, Owner, metadata, with_spec_hash
from vgate_operator.spec import ModelSpec, gateway_name, worker_name

KEDA_API = "keda.sh/v1alpha1"
#: The gateway's series, one per model and serving process (see docs/autoscaling.md).
QUEUED_SERIES = "vgate_queue_depth"
INFLIGHT_SERIES = "vgate_model_inflight"
#: Seconds between HPA scale-up steps of at most ``MAX_SCALE_UP_RATE`` times.
STEP_PERIOD_S = 15


def load_query(owner: Owner, model: ModelSpec, window_s: float) -> str:
    """PromQL: the model's requests queued plus in flight over this resource's gateways.

    No ``or vector(0)``: when Prometheus has no series (the gateways are not scraped), the
    query is empty, KEDA reports an error (``ignoreNullValues: false``) and the HPA holds
    the count, rather than reading silence as no load and scaling down.
    """
    selector = f'namespace="{owner.namespace}",service="{gateway_name(owner.name)}",model="{model.name}"'
    window = f"{max(1, round(window_s))}s"
    return " + ".join(
        f"sum(avg_over_time({series}{{{selector}}}[{window}]))" for series in (QUEUED_SERIES, INFLIGHT_SERIES)
    )


def build_scaled_object(owner: Owner, model: ModelSpec) -> Manifest:
    """The ScaledObject scaling one model's worker Deployment (a *valid* keda block)."""
    auto = model.autoscaling
    if auto is None or auto.keda is None or not auto.keda.prometheus_address:
        raise ValueError(f"model {model.name}: engine keda without keda.prometheusAddress")
    name = worker_name(owner.name, model.name)
    target = target_for(auto, model.max_num_seqs)
    trigger = {
        "type": "prometheus",
        "name": "load",
        "metadata": {
            "serverAddress": auto.keda.prometheus_address,
            "query": load_query(owner, model, auto.stable_window_seconds),
            "threshold": f"{target:g}",
            # Any request at zero replicas activates the model (scale from zero).
            "activationThreshold": "0",
            "ignoreNullValues": "false",
        },
    }
    return with_spec_hash(
        {
            "apiVersion": KEDA_API,
            "kind": "ScaledObject",
            "metadata": metadata(owner, name, "worker", {MODEL_LABEL: model.name}),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "pollingInterval": auto.keda.polling_interval_seconds,
                "cooldownPeriod": math.ceil(auto.scale_to_zero_delay_seconds),
                "minReplicaCount": auto.min_replicas,
                "maxReplicaCount": auto.max_replicas,
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(auto)}},
                "triggers": [trigger],
            },
        }
    )


def _behavior(auto: AutoscalingSpec) -> Manifest:
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "policies": [
                {
                    "type": "Percent",
                    "value": round((MAX_SCALE_UP_RATE - 1) * 100),
                    "periodSeconds": STEP_PERIOD_S,
                }
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": math.ceil(auto.scale_down_delay_seconds),
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": STEP_PERIOD_S}],
        },
    }
