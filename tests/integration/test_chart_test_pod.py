"""The chart's ``helm test`` pod: its probe script, taken from the rendered manifest, run for real.

It runs against a dry-run worker on loopback (which serves ``/v1/models`` like the gateway
does), so what ``helm test`` runs in the cluster is what is tested here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.chart import by_kind, render
from tests.support.procs import vgate_process


def probe_command(values: dict[str, Any], url: str) -> list[str]:
    """The test pod's command line, run by this Python, with its gateway URL swapped for ``url``."""
    (pod,) = by_kind(render(values), "Pod")
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-c"]
    script, in_cluster_url, models = container["args"]
    assert in_cluster_url.endswith(".svc:8000/v1/models")
    return [sys.executable, "-c", script, url, models]


@pytest.mark.timeout(60)
def test_helm_test_probe_passes_when_every_model_is_served(tmp_path: Path) -> None:
    values = {"deployment": {"enabled": True}}
    with vgate_process(["worker", "--dry-run", "--served-model-name", "qwen"], tmp_path) as worker:
        command = probe_command(values, f"{worker.url}/v1/models")
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "qwen" in done.stdout


@pytest.mark.timeout(60)
def test_helm_test_probe_fails_naming_the_missing_model(tmp_path: Path) -> None:
    spec = {"models": [{"name": "qwen"}, {"name": "absent"}], "worker": {"dryRun": True}}
    values = {"deployment": {"enabled": True, "spec": spec}, "tests": {"timeoutSeconds": 2}}
    with vgate_process(["worker", "--dry-run", "--served-model-name", "qwen"], tmp_path) as worker:
        command = probe_command(values, f"{worker.url}/v1/models")
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "absent" in done.stderr
