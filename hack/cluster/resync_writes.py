"""Count an operator's writes across two quiet resyncs on a real control plane.

    hack/cluster/netns.sh .venv/bin/python hack/cluster/resync_writes.py SOURCE_TREE WORKDIR

Runs ``vgate operator`` from SOURCE_TREE (a checkout of any version: its operator/, gateway/,
worker/ and vgate/ packages, its CRD and examples/dry-run.yaml) against a fresh kwok cluster
(tests/support/cluster.py), under a ServiceAccount of its own, waits until the example is Ready,
then counts that account's writes in the API server's audit log across two resyncs with nothing
changed. It then runs ``kubectl rollout restart`` on the worker Deployment and reports whether
the next two resyncs kept the restart. Needs the binaries of hack/cluster/build.sh and root.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.cluster import Cluster, cluster_bin, kubelet, wait_for

NS, NAME = "llm", "vgate-dry-run"
WORKER = f"{NAME}-worker-qwen-dry-run"
USER = f"system:serviceaccount:{NS}:op"
RESYNC_S = 5


def main(src: Path, work: Path) -> int:
    c = Cluster(bin=cluster_bin(), workdir=work)
    c.create()
    print(f"cluster up in {c.started_s:.1f}s", flush=True)
    try:
        with kubelet(c, work / "kubelet.log"):
            c.kubectl("apply", "-f", str(src / "crds" / "vgate.io_vgatedeployments.yaml"))
            c.kubectl("create", "namespace", NS)
            c.kubectl("create", "serviceaccount", "op", "-n", NS)
            c.kubectl(
                "create",
                "clusterrolebinding",
                "op",
                "--clusterrole=cluster-admin",
                f"--serviceaccount={NS}:op",
            )
            cfg = json.loads(c.kubectl("config", "view", "--raw", "-o", "json"))
            cfg["users"] = [{"name": "op", "user": {"token": c.token(NS, "op")}}]
            cfg["contexts"][0]["context"]["user"] = "op"
            (work / "op-kubeconfig").write_text(json.dumps(cfg))
            env = {
                **os.environ,
                "KUBECONFIG": str(work / "op-kubeconfig"),
                "VGATE_OPERATOR_RESYNC_INTERVAL_S": str(RESYNC_S),
                "PYTHONPATH": ":".join(str(src / d) for d in ("", "operator", "gateway", "worker")),
                "PYTHONUNBUFFERED": "1",
            }
            log_path = work / "operator.log"
            with log_path.open("wb") as log:
                op = subprocess.Popen(
                    [sys.executable, "-m", "vgate", "operator", "--standalone"],
                    cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
                try:
                    measure(c, src, log_path)
                finally:
                    op.terminate()
                    op.wait(timeout=30)
    finally:
        c.delete()
    return 0


def measure(c: Cluster, src: Path, log_path: Path) -> None:
    c.kubectl("apply", "-n", NS, "-f", str(src / "examples" / "dry-run.yaml"))
    c.kubectl("wait", "--for=condition=Ready", f"vgd/{NAME}", "-n", NS, "--timeout=240s", timeout=260)
    line = f"[{NS}/{NAME}] Timer 'resync' succeeded"

    def resyncs(count: int) -> None:
        start = log_path.read_text(errors="replace").count(line)
        wait_for(lambda: log_path.read_text(errors="replace").count(line) >= start + count, "resyncs")

    resyncs(1)  # the status of the rollout settles
    mark = c.audit_mark()
    resyncs(2)
    writes = collections.Counter(
        f"{w['verb']} {w['objectRef'].get('resource')}"
        + (f"/{w['objectRef']['subresource']}" if w["objectRef"].get("subresource") else "")
        for w in c.writes(USER, since=mark)
    )
    print(f"writes across two quiet resyncs: {sum(writes.values())} {dict(writes)}", flush=True)
    c.kubectl("rollout", "restart", f"deployment/{WORKER}", "-n", NS)
    before = c.get("deployment", WORKER, NS)["metadata"]["generation"]
    resyncs(2)
    dep = c.get("deployment", WORKER, NS)
    kept = "kubectl.kubernetes.io/restartedAt" in (
        dep["spec"]["template"]["metadata"].get("annotations") or {}
    )
    print(
        f"rollout restart, then two resyncs: restartedAt kept: {kept}; worker Deployment generation "
        f"{before} -> {dep['metadata']['generation']}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()))
