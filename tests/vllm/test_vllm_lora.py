"""LoRA adapters on real vLLM (CPU) through the gateway: answers, runtime loading, affinity.

Two float16 workers of the tiny model start with ``--max-loras 2`` (the launcher adds
``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``), and the gateway declares two
adapters made here in PEFT's layout (``hack/tiny_model.write_lora``). Where vLLM's CPU build
cannot serve LoRA, every test here is skipped with the error vLLM gave.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from hack import tiny_model as tm
from tests.support.metrics import metric
from tests.support.procs import Proc, make_proc, running
from tests.vllm import conftest as tier
from tests.vllm.conftest import TinyModels, worker_proc

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

BASE = "tiny-qwen-lora-base"
PROMPT = "The gateway routes each request to"


@dataclass
class LoraStack:
    workers: list[Proc]
    gateway: Proc
    adapters: dict[str, Path]

    def client(self, proc: Proc | None = None) -> openai.OpenAI:
        target = proc or self.gateway
        return openai.OpenAI(base_url=f"{target.url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def lora_stack(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoraStack]:
    tmp_path = tmp_path_factory.mktemp("vllm-lora")
    adapters = {
        "tiny-lora-a": tm.write_lora(tmp_path / "lora-a", tiny_models.float, seed=1),
        "tiny-lora-b": tm.write_lora(tmp_path / "lora-b", tiny_models.float, seed=2),
    }
    workers = [worker_proc(tiny_models.float, "none", BASE, tmp_path) for _ in range(2)]
    for w in workers:  # launcher flags go before the pass-through `--` part
        w.args[w.args.index("--") : w.args.index("--")] = ["--max-loras", "2"]
    try:
        ctx = running(workers, timeout=tier.START_TIMEOUT_S)
        started = ctx.__enter__()
    except Exception as exc:  # vLLM refused LoRA at start-up on this host: skip, with its words
        reason = tier.lora_skip(_vllm_error(workers) or str(exc))
        pytest.skip(reason)
    try:
        declared = {n: {"base": BASE, "source": str(p)} for n, p in adapters.items()}
        env = {
            "VGATE_HEALTH_INTERVAL_S": "0.5",
            "VGATE_ADAPTERS": json.dumps(declared),
            "VGATE_MAX_LORAS": "2",
            "VGATE_CACHE_MAXSIZE": "0",
            "VGATE_BATCH_COMPLETIONS": "false",
        }
        endpoints = [arg for w in started for arg in ("--endpoint", w.url)]
        gateway = make_proc(["gateway", *endpoints], tmp_path, env=env, name="lora-gateway")
        with running([gateway], ready_path="/ready", timeout=60):
            probe = _load(started[0], "probe", adapters["tiny-lora-a"])
            if probe.status_code != 200:
                pytest.skip(tier.lora_skip(probe.text))
            _unload(started[0], "probe")
            yield LoraStack(workers=started, gateway=gateway, adapters=adapters)
    finally:
        ctx.__exit__(None, None, None)


def _vllm_error(workers: list[Proc]) -> str:
    """The last error line vLLM logged, if a worker died."""
    for w in workers:
        lines = [line for line in w.log().splitlines() if "Error" in line]
        if lines:
            return lines[-1].strip()
    return ""


def _load(worker: Proc, name: str, path: Path) -> httpx.Response:
    body = {"lora_name": name, "lora_path": str(path)}
    return httpx.post(f"{worker.url}/v1/load_lora_adapter", json=body, timeout=120)


def _unload(worker: Proc, name: str) -> httpx.Response:
    return httpx.post(f"{worker.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


def loaded(worker: Proc) -> dict[str, str]:
    cards = httpx.get(f"{worker.url}/v1/models", timeout=10).json()["data"]
    return {c["id"]: c["parent"] for c in cards if c.get("parent")}


def greedy(client: openai.OpenAI, model: str) -> str:
    r = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
    )
    return r.choices[0].text


def test_adapter_answers_as_direct_vllm_and_unlike_the_base(lora_stack: LoraStack) -> None:
    base = greedy(lora_stack.client(), BASE)
    through_gateway = greedy(lora_stack.client(), "tiny-lora-a")  # loaded by the gateway on demand
    holders = [w for w in lora_stack.workers if "tiny-lora-a" in loaded(w)]
    assert len(holders) == 1
    assert loaded(holders[0])["tiny-lora-a"] == BASE
    assert greedy(lora_stack.client(holders[0]), "tiny-lora-a") == through_gateway
    assert through_gateway != base
    assert greedy(lora_stack.client(), "tiny-lora-b") not in (base, through_gateway)


def test_affinity_counted_by_vllms_own_metrics(lora_stack: LoraStack) -> None:
    greedy(lora_stack.client(), "tiny-lora-b")
    holders = [w for w in lora_stack.workers if "tiny-lora-b" in loaded(w)]
    assert len(holders) == 1
    name = "vllm:request_success_total"
    before = [metric(w.url, name, missing=0) for w in lora_stack.workers]
    for _ in range(6):
        greedy(lora_stack.client(), "tiny-lora-b")
    served = [metric(w.url, name, missing=0) - b for w, b in zip(lora_stack.workers, before, strict=True)]
    assert served == [6.0 if w is holders[0] else 0.0 for w in lora_stack.workers]


def test_runtime_unload_of_an_adapter_the_gateway_does_not_declare(lora_stack: LoraStack) -> None:
    worker = lora_stack.workers[1]
    r = _load(worker, "tiny-lora-stray", lora_stack.adapters["tiny-lora-b"])
    assert r.status_code == 200, r.text  # vLLM loaded it; the gateway's health round may already see it
    end = time.monotonic() + 30.0
    while "tiny-lora-stray" in loaded(worker):  # the gateway's next health round unloads it
        assert time.monotonic() < end, "the gateway did not unload the undeclared adapter"
        time.sleep(0.5)
    with pytest.raises(openai.NotFoundError):
        greedy(lora_stack.client(), "tiny-lora-stray")
    with pytest.raises(openai.NotFoundError):
        greedy(lora_stack.client(worker), "tiny-lora-stray")  # vLLM itself no longer has it
