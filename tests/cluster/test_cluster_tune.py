"""``vgate tune --render-job`` on a real control plane: the Job runs, completes, and leaves its report.

The rendered manifests go to the real API server as a user sends them (``kubectl apply``); the
real Job controller and scheduler create and place the pod; the tier's kubelet runs its
``vgate tune`` on the simulator. The results claim is a PersistentVolumeClaim bound to a
hostPath PersistentVolume, so the report lands where any pod mounting the claim reads it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import ROOT, Cluster, wait_for

pytestmark = pytest.mark.timeout(600)

NS, CLAIM = "tune", "tune-results"
#: A small run, about ten seconds: two configurations and the engine's defaults, four clients.
TUNE = [
    "--scenario", "D(32,64)", "--concurrency", "4", "--requests", "8", "--grid", "max-num-seqs=1,4",
]  # fmt: skip


def storage(host: Path) -> list[dict[str, Any]]:
    """A hostPath volume and the claim bound to it: where a node keeps what the pod writes."""
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{NS}-{CLAIM}"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "manual",
            "hostPath": {"path": str(host)},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM, "namespace": NS},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "manual",
            "volumeName": f"{NS}-{CLAIM}",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    return [pv, pvc]


def render(*extra: str) -> list[dict[str, Any]]:
    """What ``vgate tune --render-job`` prints, parsed."""
    out = subprocess.run(
        [sys.executable, "-m", "vgate", "tune", *TUNE, "--render-job", "--namespace", NS, *extra],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def condition(job: dict[str, Any] | None, kind: str) -> bool:
    conditions = ((job or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == kind and c["status"] == "True" for c in conditions)


def test_the_rendered_job_tunes_on_the_simulator_and_leaves_its_report_on_the_claim(
    cluster: Cluster, logs_dir: Path
) -> None:
    cluster.kubectl("create", "namespace", NS)
    host = cluster.workdir / "volumes" / CLAIM
    for obj in storage(host):
        cluster.apply(obj)
    wait_for(
        lambda: (cluster.get("pvc", CLAIM, NS) or {}).get("status", {}).get("phase") == "Bound",
        "the results claim bound",
    )
    docs = render("--results-claim", CLAIM)
    (job,) = [d for d in docs if d["kind"] == "Job"]
    name = job["metadata"]["name"]
    # As a user applies it: the whole output, through kubectl, to the real API server.
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def finished() -> dict[str, Any] | None:
        got = cluster.get("job", name, NS)
        return got if condition(got, "Complete") or condition(got, "Failed") else None

    done = wait_for(finished, f"job {name} finished", timeout=420, interval=2)
    (pod,) = cluster.items("pods", NS, f"job-name={name}")
    logs = "\n".join(
        p.read_text(errors="replace") for p in logs_dir.glob(f"{pod['metadata']['uid']}/container.log")
    )
    assert condition(done, "Complete"), f"{json.dumps(done.get('status'))}\n{logs[-3000:]}"
    assert pod["status"]["phase"] == "Succeeded"
    assert done["status"].get("succeeded") == 1

    # docs/tune.md: the results are on the claim, in a folder named after the Job.
    results = host / name
    report = json.loads((results / "report.json").read_text())
    rows = {r["settings"]: r for r in report["rows"]}
    assert set(rows) == {"max-num-seqs=1", "max-num-seqs=4", "engine defaults"}, rows
    assert all(r["status"] == "ok" and r["score"] > 0 for r in rows.values()), rows
    # Four sequences at once serve four clients several times faster than one at a time.
    assert rows["max-num-seqs=4"]["rank"] < rows["max-num-seqs=1"]["rank"]
    assert rows["max-num-seqs=4"]["score"] > 2 * rows["max-num-seqs=1"]["score"]
    assert "max-num-seqs=4" in (results / "report.md").read_text()
    assert (results / "throughput-vs-ttft.png").stat().st_size > 0
    assert "Winner:" in logs  # the ranked table the Job's log ends with

    cluster.kubectl("delete", "job", name, "-n", NS, "--cascade=foreground", "--wait=true", timeout=120)
