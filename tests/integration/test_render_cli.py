"""``vgate render`` as a command: the builders' objects on stdout, errors on stderr, stdin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vgate_operator.builders import Owner, build_all
from vgate_operator.render import PLACEHOLDER_UID
from vgate_operator.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["dry-run.yaml", "qwen-awq-gpu.yaml"]


def vgate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vgate", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("example", EXAMPLES)
def test_render_prints_what_the_builders_build(example: str) -> None:
    path = ROOT / "examples" / example
    result = vgate("render", "-f", str(path), "-n", "llm")
    assert result.returncode == 0, result.stderr
    rendered = list(yaml.safe_load_all(result.stdout))
    resource = yaml.safe_load(path.read_text())
    name = resource["metadata"]["name"]
    owner = Owner(name=name, namespace="llm", uid=PLACEHOLDER_UID)
    assert rendered == build_all(owner, parse_spec(name, resource["spec"]))


def test_invalid_resource_is_reported_and_fails(tmp_path: Path) -> None:
    resource = yaml.safe_load((ROOT / "examples" / "dry-run.yaml").read_text())
    resource["spec"]["models"][0]["resources"]["gpus"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(resource))
    result = vgate("render", "-f", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "vgate-dry-run: invalid spec" in result.stderr
    assert "resources.gpus cannot be set with worker.dryRun" in result.stderr


def test_render_reads_stdin_and_rejects_other_kinds() -> None:
    text = (ROOT / "examples" / "dry-run.yaml").read_text()
    assert vgate("render", "-f", "-", stdin=text).returncode == 0
    other = vgate("render", "-f", "-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert other.returncode == 1
    assert "expected a vgate.io VGateDeployment" in other.stderr
    missing = vgate("render", "-f", "/nonexistent.yaml")
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr
