"""The real control-plane tier: one kwok cluster and one Helm release for the whole module.

Needs the binaries from ``hack/cluster/build.sh`` and a network namespace routing
``POD_CIDR`` to its loopback (``make test-cluster`` sets both up, as root).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import NODES, Cluster, cluster_bin, kubelet


def _in_pod_network() -> bool:
    # Inside the tier's namespace every pod address is local: binding one succeeds.
    address = str(next(ipaddress.ip_network(next(iter(NODES.values()))).hosts()))
    with socket.socket() as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    binaries = cluster_bin()
    missing = [b for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
                           "etcd", "kwok", "kwokctl", "helm") if not (binaries / b).exists()]  # fmt: skip
    if missing:
        pytest.fail(f"missing {missing} in {binaries}: run hack/cluster/build.sh (make test-cluster does)")
    if not _in_pod_network():
        pytest.fail("not inside the tier's network namespace: run `make test-cluster` (as root)")
    workdir = tmp_path_factory.mktemp("kwok")
    c = Cluster(bin=binaries, workdir=workdir)
    started = time.monotonic()
    try:
        c.create()
        print(f"\ncluster up in {time.monotonic() - started:.1f}s")
        with kubelet(c, workdir / "kubelet.log") as node:
            time.sleep(2)
            assert node.alive(), node.log_tail(3000)
            yield c
    finally:
        c.delete()


@pytest.fixture(scope="session")
def logs_dir(cluster: Cluster) -> Path:
    return cluster.workdir / "pods"
