"""``vgate operator`` refuses bad flags and settings before contacting any cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def vgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vgate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": "/nonexistent", **(env or {})},
    )


def test_help_lists_the_flags() -> None:
    result = vgate("operator", "--help")
    assert result.returncode == 0
    for flag in ("--namespace", "--peering", "--standalone", "--liveness", "--metrics"):
        assert flag in result.stdout


def test_a_bad_metrics_address_is_refused_with_a_message() -> None:
    for bad in ("8081", "0.0.0.0:http", "0.0.0.0:70000", ":8081"):
        result = vgate("operator", "--standalone", "--metrics", bad)
        assert result.returncode == 2, bad
        assert "is not HOST:PORT with a port 1-65535" in result.stderr


def test_peering_and_standalone_are_exclusive() -> None:
    result = vgate("operator", "--peering", "vgate", "--standalone")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_invalid_settings_fail_fast() -> None:
    result = vgate("operator", "--standalone", env={"VGATE_OPERATOR_RESYNC_INTERVAL_S": "0"})
    assert result.returncode == 2
    assert "resync_interval_s" in result.stderr


def test_missing_credentials_fail_fast(tmp_path: Path) -> None:
    result = vgate("operator", "--standalone", env={"HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "no Kubernetes credentials" in result.stderr
