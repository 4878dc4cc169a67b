"""``vgate operator``: run the VGateDeployment operator (kopf, embedded).

    vgate operator [--namespace NS]... [--peering NAME | --standalone] [--liveness URL] [--metrics HOST:PORT]
    vgate operator [--namespace NS]... --uninstall [--timeout S]

Without ``--namespace`` it serves every namespace. Credentials come from the pod's
service account in a cluster, else from KUBECONFIG / ~/.kube/config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
from collections.abc import Sequence

from pydantic import ValidationError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vgate operator", description="Reconcile VGateDeployment resources."
    )
    parser.add_argument(
        "-n", "--namespace", action="append", default=[], metavar="NS",
        help="serve this namespace (repeatable; glob patterns allowed); default: all namespaces",
    )  # fmt: skip
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--peering", metavar="NAME", help="coordinate replicas through this KopfPeering")
    peering.add_argument("--standalone", action="store_true", help="run without peering (one replica)")
    parser.add_argument(
        "--priority",
        type=int,
        metavar="N",
        help="peering priority; the highest active peer works, the rest stand by "
        "(default: random, so the replicas of one Deployment never tie and all pause)",
    )
    parser.add_argument(
        "--liveness", metavar="URL", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument(
        "--metrics",
        type=_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics (vgate_operator_reconciles_total) at http://HOST:PORT/metrics, "
        "e.g. 0.0.0.0:8081",
    )
    parser.add_argument("--verbose", action="store_true", help="log at debug level")
    parser.add_argument(
        "--uninstall",
        action="store_true",
        help="delete every VGateDeployment in the served namespaces and wait until the running "
        "operator has let them go (the Helm chart's pre-delete hook), instead of operating",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="with --uninstall: seconds to wait"
    )
    return parser


def _address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); argparse turns the error into a usage message."""
    host, _, port_text = text.rpartition(":")
    port = int(port_text) if port_text.isdigit() else 0
    if not host or not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT with a port 1-65535")
    return host.strip("[]"), port


async def _credentials_problem() -> str | None:
    """Fail fast and clearly when no cluster is configured (kopf would retry forever)."""
    from kubernetes_asyncio.config import ConfigException

    from vgate_operator.k8s import connect

    try:
        api = await connect()
    except ConfigException as exc:
        return str(exc)
    await api.close()
    return None


def main(argv: Sequence[str]) -> int:
    """Parse flags, register the handlers, and run until SIGINT/SIGTERM."""
    args = _parser().parse_args(list(argv))

    import kopf

    from vgate_operator.main import register
    from vgate_operator.settings import OperatorSettings

    try:
        config = OperatorSettings()
    except ValidationError as exc:
        print(f"vgate operator: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    # The prefix names the resource ([namespace/name]) on every per-object log line.
    problem = asyncio.run(_credentials_problem())
    if problem:
        print(
            f"vgate operator: no Kubernetes credentials (in-cluster or KUBECONFIG): {problem}",
            file=sys.stderr,
        )
        return 1
    if args.uninstall:
        from vgate_operator.uninstall import uninstall

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        return asyncio.run(uninstall(args.namespace, args.timeout))
    kopf.configure(verbose=args.verbose, log_prefix=True)
    registry = kopf.get_default_registry()
    from vgate_operator.metrics import OperatorMetrics, serve

    metrics = OperatorMetrics()
    if args.metrics is not None:
        serve(metrics, args.metrics[1], args.metrics[0])
    register(registry, config, metrics)
    kopf.run(
        registry=registry,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=True if args.standalone else None,
        peering_name=args.peering,
        priority=args.priority if args.priority is not None else random.randint(1, 32767),
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(),
    )
    return 0
