"""A real Kubernetes control plane for tests: kwokctl's binary runtime on 127.0.0.1.

kube-apiserver, kube-controller-manager (Deployment, ReplicaSet, EndpointSlice and garbage
collector controllers), kube-scheduler and etcd are the real ones, built from source by
``hack/cluster/build.sh``; kwok plays the nodes, :mod:`tests.support.kubelet` plays the
kubelet for V-Gate's pods. The whole tier runs inside a network namespace that routes the
nodes' pod CIDR (:data:`POD_CIDR`) to its loopback, so every pod address is local and no
traffic leaves it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vgate import procs, waiting

ROOT = Path(__file__).resolve().parents[2]
POD_CIDR = "10.244.0.0/16"
NODES = {"node-a": "10.244.1.0/24", "node-b": "10.244.2.0/24"}
CLUSTER = "vgate"
#: Audit writes, and reads of Deployments, with who made them: the operator's write count and
#: the selectors of its Deployment watches come from here.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {
            "level": "Metadata",
            "verbs": ["list", "watch"],
            "resources": [{"group": "apps", "resources": ["deployments"]}],
        },
        {"level": "None"},
    ],
}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def cluster_bin() -> Path:
    """The folder ``hack/cluster/build.sh`` built into (it prints it last)."""
    configured = os.environ.get("VGATE_CLUSTER_BIN")
    if configured:
        return Path(configured)
    out = subprocess.run(
        ["bash", "-c", f"source {ROOT}/hack/cluster/versions.sh && echo $CLUSTER_BIN"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def node(name: str, cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    }


@dataclass
class Cluster:
    bin: Path
    workdir: Path
    started_s: float = 0.0

    @property
    def home(self) -> Path:
        return self.workdir / "clusters" / CLUSTER

    @property
    def kubeconfig(self) -> Path:
        return self.home / "kubeconfig.yaml"

    @property
    def audit_log(self) -> Path:
        return self.home / "logs" / "audit.log"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ.get('PATH', '')}",
            "KWOK_WORKDIR": str(self.workdir),
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.workdir / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(self.workdir / "helm" / "config"),
            "HELM_DATA_HOME": str(self.workdir / "helm" / "data"),
            **extra,
        }

    # -- lifecycle
    def create(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        config = self.workdir / "kwok.yaml"
        kwokctl = {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokctlConfiguration",
            "options": {
                "runtime": "binary",
                "bindAddress": "127.0.0.1",
                "kubeApiserverPort": 6443,
                "kubeBinaryPrefix": str(self.bin),
                "kubectlBinary": str(self.bin / "kubectl"),
                "etcdBinary": str(self.bin / "etcd"),
                "kwokControllerBinary": str(self.bin / "kwok"),
                "kubeAuthorization": True,
                "kubeAuditPolicy": str(policy),
                "disableQPSLimits": True,
            },
            # The namespace has no default route to pick an address from, and loopback is no valid
            # endpoint of the kubernetes Service: 10.244.0.1 is local here and in no node's range.
            "componentsPatches": [
                {
                    "name": "kube-apiserver",
                    "extraArgs": [
                        {"key": "advertise-address", "value": "10.244.0.1"},
                        {"key": "service-cluster-ip-range", "value": "10.96.0.0/16"},
                    ],
                },
                {
                    # V-Gate's pods are run by tests.support.kubelet; kwok plays the rest (none here).
                    "name": "kwok-controller",
                    "extraArgs": [
                        {
                            "key": "disregard-status-with-label-selector",
                            "value": "app.kubernetes.io/part-of=vgate",
                        }
                    ],
                },
            ],
        }
        config.write_text(yaml.safe_dump(kwokctl))
        started = time.monotonic()
        self.kwokctl("create", "cluster", "--config", str(config), "--wait", "5m", timeout=600)
        self.kubectl("wait", "--for=condition=Available", "apiservice/v1.", "--timeout=120s", timeout=150)
        for name, cidr in NODES.items():
            self.apply(node(name, cidr))
        self.started_s = time.monotonic() - started

    def delete(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.kwokctl("delete", "cluster", timeout=120)

    # -- tools
    def run(self, *argv: str, timeout: float = 120, check: bool = True, stdin: str | None = None) -> str:
        proc = subprocess.run(
            list(argv), env=self.env(), capture_output=True, text=True, timeout=timeout, input=stdin
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def kwokctl(self, *args: str, timeout: float = 120) -> str:
        return self.run(str(self.bin / "kwokctl"), "--name", CLUSTER, *args, timeout=timeout)

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True, stdin: str | None = None) -> str:
        return self.run(str(self.bin / "kubectl"), *args, timeout=timeout, check=check, stdin=stdin)

    def helm(self, *args: str, timeout: float = 300) -> str:
        return self.run(str(self.bin / "helm"), *args, timeout=timeout)

    def apply(self, obj: dict[str, Any], *args: str) -> str:
        return self.kubectl("apply", "-f", "-", *args, stdin=json.dumps(obj))

    def get(self, kind: str, name: str | None = None, namespace: str | None = None) -> Any:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        out = self.kubectl(*args, check=False)
        return json.loads(out) if out.strip() else None

    def items(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json", *(["-l", selector] if selector else [])]
        return json.loads(self.kubectl(*args))["items"]

    def token(self, namespace: str, account: str) -> str:
        return self.kubectl("create", "token", account, "-n", namespace, "--duration", "2h").strip()

    # -- the audit log: who wrote what
    def requests(self, user: str, verbs: set[str], since: int = 0) -> list[dict[str, Any]]:
        """Audited requests by ``user`` with one of ``verbs``, from line ``since`` of the log on."""
        if not self.audit_log.exists():
            return []
        lines = self.audit_log.read_text().splitlines()[since:]
        events = [json.loads(line) for line in lines if line.strip()]
        return [e for e in events if e.get("verb") in verbs and (e.get("user") or {}).get("username") == user]

    def writes(self, user: str, since: int = 0) -> list[dict[str, Any]]:
        """Write requests by ``user`` in the audit log from line ``since`` on."""
        return self.requests(user, WRITE_VERBS, since)

    def audit_mark(self) -> int:
        return len(self.audit_log.read_text().splitlines()) if self.audit_log.exists() else 0


def kubelet(cluster: Cluster, log_path: Path) -> AbstractContextManager[procs.Child]:
    """Run :mod:`tests.support.kubelet` for the cluster's V-Gate pods until the block ends."""
    argv = [sys.executable, "-m", "tests.support.kubelet", "--kubeconfig", str(cluster.kubeconfig),
            "--workdir", str(cluster.workdir / "pods")]  # fmt: skip
    return procs.running(argv, env=cluster.env(), log=log_path, cwd=ROOT, grace=30.0)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 120.0, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    return waiting.wait_for(check, what, within=timeout, interval=interval, fail=AssertionError)
