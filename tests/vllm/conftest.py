"""The real-vLLM tier: vLLM's CPU engine serving the tiny Qwen2 model, AWQ and float16.

Started once per session, in parallel (each vLLM server takes about a minute on two cores), all
through ``vgate worker`` exactly as on GPUs: two AWQ workers and a float16 twin, with the gateway
in front of the two AWQ workers.

Before any server starts, vLLM itself is asked whether its CPU build has the 4-bit (WNA16)
kernel AWQ needs on this CPU (only its AVX-512 builds do). Where it does not, the gateway pair
serves the float16 twin instead, every test marked ``awq_kernel`` is skipped with the reason
(naming the kernel and the CPU feature), and everything else runs.

Outside ``.venv-vllm`` every test here is skipped with the reason; ``make test-vllm`` sets
``VGATE_REQUIRE_VLLM=1``, which fails the run on any skip other than the missing-kernel one.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from hack import tiny_model as tm
from tests.support.procs import Proc, make_proc, running
from vgate_worker import cpu_kernels

SERVED_NAME = "tiny-qwen-awq"
FLOAT_NAME = "tiny-qwen-float"
MAX_MODEL_LEN = 2048
#: Tokens of the longest answer the tests ask for: a prompt of a few words fits beside it, and
#: the tiny model takes seconds to write it, long enough to act on while it is written.
LONGEST_ANSWER = MAX_MODEL_LEN - 32
START_TIMEOUT_S = 420.0
REQUIRE = os.environ.get("VGATE_REQUIRE_VLLM", "") == "1"
VLLM_MISSING = importlib.util.find_spec("vllm") is None
# A small KV cache fits two cores' memory; no core pinning, so three servers share both cores.
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
# Eager mode and an in-process model runner halve start-up on two cores; the AWQ weight
# loading and kernels under test are the same either way.
VLLM_FAST_START = ["--", "--enforce-eager", "--distributed-executor-backend", "uni"]


def pytest_configure(config: pytest.Config) -> None:
    # torch and transformers warn about their own internals; those are not V-Gate's to fix.
    for module in ("torch", "transformers", "vllm", "triton"):
        config.addinivalue_line("filterwarnings", f"ignore::DeprecationWarning:{module}.*")
        config.addinivalue_line("filterwarnings", f"ignore::UserWarning:{module}.*")
        config.addinivalue_line("filterwarnings", f"ignore::FutureWarning:{module}.*")


_awq_support: cpu_kernels.KernelSupport | None = None


def awq_support() -> cpu_kernels.KernelSupport:
    """vLLM's own answer, asked once per session (importing vLLM's kernels takes seconds)."""
    global _awq_support
    if _awq_support is None:
        _awq_support = cpu_kernels.wna16_support(cpu_kernels.ask_vllm())
    return _awq_support


def awq_skip_reason() -> str:
    return f"AWQ kernels unavailable: {awq_support().reason}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tier = [item for item in items if "tests/vllm/" in item.nodeid]
    if VLLM_MISSING:
        reason = "vLLM is not installed in this environment; `make test-vllm` runs this tier in .venv-vllm"
        for item in tier:
            item.add_marker(pytest.mark.skip(reason=reason))
        return
    if not any(item.get_closest_marker("awq_kernel") for item in tier):
        return
    support = awq_support()
    print(f"\nvLLM CPU kernels: {support.reason}")
    if support.available:
        return
    for item in tier:
        if item.get_closest_marker("awq_kernel"):
            item.add_marker(pytest.mark.skip(reason=awq_skip_reason()))


_skipped: list[tuple[str, str]] = []
#: Set when vLLM refused LoRA on this host: the LoRA tests' skip, with vLLM's own message.
_lora_refused: str | None = None
LORA_SKIP = "LoRA unavailable in vLLM's CPU build here: "


def lora_skip(vllm_message: str) -> str:
    """The skip reason of the LoRA tests when vLLM itself refused LoRA (entitled, like the AWQ one)."""
    global _lora_refused
    _lora_refused = LORA_SKIP + vllm_message.strip()[:500]
    return _lora_refused


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _skipped.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Under `make test-vllm` a skip means part of the tier did not run: fail, except for the one
    # skip this host is entitled to, the AWQ kernel that vLLM said it does not have here.
    if not REQUIRE:
        return
    entitled = None if _awq_support is None or _awq_support.available else awq_skip_reason()
    allowed = [r for r in (entitled, _lora_refused) if r]
    other = [node for node, reason in _skipped if not any(r in reason for r in allowed)]
    if other or session.testscollected == 0:
        print(
            f"\nVGATE_REQUIRE_VLLM=1 but {session.testscollected} collected, skipped without cause: {other}"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif _skipped:
        print(f"\n{len(_skipped)} test(s) skipped: {'; '.join(allowed)}")


@dataclass
class TinyModels:
    awq: Path
    float: Path


@dataclass
class VllmStack:
    """Two vLLM workers (AWQ where vLLM can run it), the float16 model, and the gateway in front of the pair."""

    workers: list[Proc]
    float_worker: Proc  # the AWQ pair's float16 twin, or the first worker when the pair is float16
    gateway: Proc
    tmp_path: Path
    model: str  # the name the pair serves
    awq: bool

    def client(self, proc: Proc | None = None) -> openai.OpenAI:
        """The official client against ``proc``, or the gateway by default."""
        target = proc or self.gateway
        return openai.OpenAI(base_url=f"{target.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """The tiny Qwen2 model written twice from one seed: AWQ 4-bit and float16."""
    root = tmp_path_factory.mktemp("models")
    return TinyModels(awq=tm.write_model(root / "awq", "awq"), float=tm.write_model(root / "float", "float"))


def worker_proc(model: Path, quantization: str, name: str, tmp_path: Path) -> Proc:
    args = [
        "worker", "--model", str(model), "--quantization", quantization, "--device", "cpu",
        "--host", "127.0.0.1", "--served-model-name", name, "--max-model-len", str(MAX_MODEL_LEN),
    ]  # fmt: skip
    proc = make_proc(args, tmp_path, env=VLLM_ENV, name=f"{name}-{quantization}")
    # make_proc appends --port; the pass-through vLLM flags must stay after `--`, last.
    proc.args += VLLM_FAST_START
    return proc


def gateway_proc(workers: list[Proc], tmp_path: Path) -> Proc:
    endpoints = [arg for w in workers for arg in ("--endpoint", w.url)]
    env = {"VGATE_HEALTH_INTERVAL_S": "0.5", "VGATE_ROUTING": "round-robin"}
    return make_proc(["gateway", *endpoints], tmp_path, env=env, name="gateway")


@pytest.fixture(scope="session")
def vllm_stack(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmStack]:
    """Start every vLLM server at once (each ~1 min), then the gateway; stop all at the end."""
    tmp_path = tmp_path_factory.mktemp("vllm-stack")
    awq = awq_support().available
    if awq:
        workers = [worker_proc(tiny_models.awq, "awq", SERVED_NAME, tmp_path) for _ in range(2)]
        servers = [*workers, worker_proc(tiny_models.float, "none", FLOAT_NAME, tmp_path)]
    else:
        workers = [worker_proc(tiny_models.float, "none", FLOAT_NAME, tmp_path) for _ in range(2)]
        servers = workers
    with running(servers, timeout=START_TIMEOUT_S):
        gateway = gateway_proc(workers, tmp_path)
        with running([gateway], ready_path="/ready", timeout=60):
            yield VllmStack(
                workers=workers,
                float_worker=servers[-1],
                gateway=gateway,
                tmp_path=tmp_path,
                model=SERVED_NAME if awq else FLOAT_NAME,
                awq=awq,
            )
