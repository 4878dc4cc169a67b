"""The end-to-end suite run by plain pytest: it skips without a cluster, refuses a foreign one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def kubeconfig(tmp_path: Path, name: str, context: str | None) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": context}))
    return path


def e2e_suite(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``pytest tests/e2e`` with no cluster tools on PATH and a home of its own."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/e2e", "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_plain_pytest_skips_the_suite_without_a_cluster(tmp_path: Path) -> None:
    done = e2e_suite(tmp_path, {"KUBECONFIG": str(tmp_path / "none")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no Kubernetes cluster is configured" in done.stdout
    assert " passed" not in done.stdout


def test_requested_suite_refuses_a_foreign_context(tmp_path: Path) -> None:
    config = kubeconfig(tmp_path, "config", "prod-cluster")
    done = e2e_suite(tmp_path, {"KUBECONFIG": str(config), "VGATE_E2E": "1"})
    assert done.returncode != 0
    assert "refusing kube-context 'prod-cluster'" in done.stdout + done.stderr
