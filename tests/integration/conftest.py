"""Fixtures for the integration tier: real ``vgate`` processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests.support.procs import Proc, make_proc, running, vgate_process
from vgate_worker.settings import DEFAULT_MODEL

MODEL = DEFAULT_MODEL
# Real timing, a little slower than a GPU (about 8 ms a token), so streams visibly stream.
WORKER_ARGS = ["worker", "--dry-run", "--served-model-name", MODEL, "--speed", "0.2"]


@dataclass
class Stack:
    gateway: Proc
    workers: list[Proc]
    tmp_path: Path

    @property
    def url(self) -> str:
        return self.gateway.url

    def client(self, api_key: str = "unused", **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)  # type: ignore[arg-type]


def start_stack(
    stack: ExitStack,
    tmp_path: Path,
    workers: int = 2,
    gateway_env: dict[str, str] | None = None,
    worker_args: Sequence[str] = WORKER_ARGS,
) -> Stack:
    # Workers start together (interpreter start-up dominates), then the gateway in front.
    procs = stack.enter_context(
        running([make_proc(list(worker_args), tmp_path, name=f"worker{i}") for i in range(workers)])
    )
    env = {
        "VGATE_ENDPOINTS": ",".join(p.url for p in procs),
        "VGATE_HEALTH_INTERVAL_S": "0.2",
        "VGATE_ROUTING": "round-robin",
        **(gateway_env or {}),
    }
    gateway = stack.enter_context(
        vgate_process(["gateway"], tmp_path, env=env, ready_path="/ready", name="gateway")
    )
    return Stack(gateway=gateway, workers=procs, tmp_path=tmp_path)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway in front of two dry-run workers, shared by a module's read-only tests."""
    with ExitStack() as es:
        yield start_stack(es, tmp_path_factory.mktemp("stack"))


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack a test may break (stop and restart workers)."""
    with ExitStack() as es:
        yield start_stack(es, tmp_path)
