"""Problems of the autoscaling and queue blocks: reported, never blocking the rest.

A bad ``autoscaling`` block must not stop the operator from reconciling the resource's other
parts, so these checks live apart from :func:`vgate_operator.spec.check_spec` (which refuses
the whole spec): the reconcile applies everything, leaves the replicas of a model whose
block is invalid where they are, and reports the problems in the ``Ready`` condition.
"""

from __future__ import annotations

from vgate_operator.autoscale.spec import check_autoscaling, check_queue
from vgate_operator.spec import ModelSpec, VGateDeploymentSpec


def model_problems(index: int, model: ModelSpec) -> list[str]:
    where = f"models[{index}] ({model.name})"
    problems = check_queue(where, model.queue)
    if model.autoscaling is not None:
        problems += check_autoscaling(where, model.autoscaling)
    return problems


def autoscaling_problems(spec: VGateDeploymentSpec) -> list[str]:
    """Every problem of every model's autoscaling and queue blocks."""
    return [p for i, m in enumerate(spec.models) for p in model_problems(i, m)]


def autoscaled(model: ModelSpec) -> bool:
    """Whether the operator leaves this model's replica count to an autoscaler (valid or not)."""
    return model.autoscaling is not None


def runs_builtin(index: int, model: ModelSpec) -> bool:
    """Whether the operator's own loop scales this model: builtin engine and a valid block."""
    auto = model.autoscaling
    return auto is not None and auto.engine == "builtin" and not model_problems(index, model)


def runs_keda(index: int, model: ModelSpec) -> bool:
    """Whether a KEDA ScaledObject scales this model: keda engine and a valid block."""
    auto = model.autoscaling
    return auto is not None and auto.engine == "keda" and not model_problems(index, model)
