"""``vgate tune --render-job``: the same tuning as a Kubernetes Job, rendered as data.

The Job runs ``vgate tune`` in the worker image (which has vLLM; the dry-run image for the
simulator) on a node like the ones that will serve, with the manifest mounted from a ConfigMap.
Results go to ``/results``: a PersistentVolumeClaim when ``--results-claim`` names one, else
an emptyDir that the pod keeps for an hour after the run, so ``kubectl cp`` can fetch it
(docs/tune.md). Pure: arguments in, manifests out.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vgate.tune.manifest import TuneTarget
from vgate_operator.builders.common import RUN_AS, container_security_context, image

RESULTS_MOUNT = "/results"
MANIFEST_MOUNT = "/etc/vgate-tune"
#: Seconds a pod with an emptyDir for results waits after the run, for ``kubectl cp``.
HOLD_S = 3600
# Flags that shape the Job itself, not the tuning inside it.
_JOB_FLAGS = {
    "--render-job": 0,
    "--image": 1,
    "--namespace": 1,
    "--results-claim": 1,
    "--results": 1,
    "-f": 1,
    "--filename": 1,
}


def tune_args(argv: Sequence[str]) -> list[str]:
    """The command line without the Job's own flags (and without ``-f``, which the Job remounts)."""
    out: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in _JOB_FLAGS:
            skip = _JOB_FLAGS[name] if "=" not in arg else 0
            continue
        out.append(arg)
    return out


def job_name(argv: Sequence[str]) -> str:
    """``vgate-tune-<hash of the arguments>``: the same tuning renders the same name."""
    digest = hashlib.sha256("\0".join(argv).encode()).hexdigest()[:8]
    return f"vgate-tune-{digest}"


def render_job(argv: Sequence[str], target: TuneTarget, args: argparse.Namespace) -> list[dict[str, Any]]:
    """A ConfigMap with the manifest (when one was given) and the Job that tunes."""
    name = job_name(tune_args(argv))
    command = ["vgate", "tune", *tune_args(argv), "--results", f"{RESULTS_MOUNT}/{name}"]
    docs: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = [
        {"name": "results", "mountPath": RESULTS_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "results", **_results_volume(args.results_claim)},
        {"name": "tmp", "emptyDir": {}},
    ]
    if args.filename:
        command[2:2] = ["-f", f"{MANIFEST_MOUNT}/manifest.yaml"]
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": args.namespace, "labels": _labels()},
                "data": {"manifest.yaml": Path(args.filename).read_text()},
            }
        )
        mounts.append({"name": "manifest", "mountPath": MANIFEST_MOUNT, "readOnly": True})
        volumes.append({"name": "manifest", "configMap": {"name": name}})
    script = " ".join(_quote(c) for c in command)
    if not args.results_claim:
        script += f'; rc=$?; echo "results in {RESULTS_MOUNT}/{name}; kubectl cp within {HOLD_S} s"; sleep {HOLD_S}; exit $rc'
    container: dict[str, Any] = {
        "name": "tune",
        "image": args.image or image("worker" if target.engine == "vllm" else "worker-dry-run"),
        "command": ["sh", "-c", script],
        "volumeMounts": mounts,
        "securityContext": container_security_context(read_only_root=False),
    }
    if target.engine == "vllm":
        container["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    docs.append(_job(name, args.namespace, container, volumes))
    return docs


def _job(
    name: str, namespace: str, container: dict[str, Any], volumes: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels()},
        "spec": {
            # A tuning run resumes from its results; a retry on a fresh emptyDir would start over.
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": _labels()},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "fsGroup": RUN_AS},
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _results_volume(claim: str | None) -> dict[str, Any]:
    return {"persistentVolumeClaim": {"claimName": claim}} if claim else {"emptyDir": {}}


def _labels() -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "vgate",
        "app.kubernetes.io/component": "tune",
        "app.kubernetes.io/part-of": "vgate",
    }


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
