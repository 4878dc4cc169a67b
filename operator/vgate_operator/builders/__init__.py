"""Pure builders: the complete desired set of child objects for one VGateDeployment.

No I/O here. ``vgate render`` prints exactly what :func:`build_all` returns, and the
operator applies exactly that.
"""

from __future__ import annotations

from vgate_operator.autoscale.checks import runs_keda
from vgate_operator.builders.common import Manifest, Owner
from vgate_operator.builders.gateway import (
    build_gateway_configmap,
    build_gateway_deployment,
    build_gateway_pdb,
    build_gateway_role,
    build_gateway_rolebinding,
    build_gateway_service,
    build_gateway_serviceaccount,
    build_ingress,
)
from vgate_operator.builders.keda import build_scaled_object
from vgate_operator.builders.workers import build_worker_deployment, build_worker_pdb, build_worker_service
from vgate_operator.spec import VGateDeploymentSpec

__all__ = ["Manifest", "Owner", "build_all"]


def build_all(owner: Owner, spec: VGateDeploymentSpec) -> list[Manifest]:
    """Every child, in apply order: identity and config before the pods that use them."""
    config = build_gateway_configmap(owner, spec)
    objects: list[Manifest] = [
        build_gateway_serviceaccount(owner),
        build_gateway_role(owner),
        build_gateway_rolebinding(owner),
        config,
    ]
    for index, model in enumerate(spec.models):
        objects += [
            build_worker_service(owner, model),
            build_worker_deployment(owner, spec, model),
            build_worker_pdb(owner, model),
        ]
        if runs_keda(index, model):
            objects.append(build_scaled_object(owner, model))
    objects += [
        build_gateway_service(owner),
        build_gateway_deployment(owner, spec, config),
        build_gateway_pdb(owner),
    ]
    if spec.ingress.enabled:
        objects.append(build_ingress(owner, spec))
    return objects
