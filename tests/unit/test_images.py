"""The container images as the Dockerfiles describe them: stages, bases, users, what they copy.

Docker is not needed: the Dockerfiles are read as instructions. That the commands they run
work is checked on loopback in ``tests/integration/test_image_commands.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.dockerfiles import GATEWAY, ROOT, WORKER, exec_form, parse, stage
from vgate_operator.builders.common import RUN_AS

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
