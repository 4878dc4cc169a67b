"""LoRA adapters through the gateway: declared, loaded where wanted, routed to where loaded."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL, Stack
from tests.support.procs import make_proc, running, vgate_process

pytestmark = pytest.mark.timeout(90)

ADAPTERS = {
    "sql": {"base": MODEL, "source": "org/sql-lora"},
    "poet": {"base": MODEL, "source": "org/poet-lora"},
    "chef": {"base": MODEL, "source": "org/chef-lora"},
    "pinned": {"base": MODEL, "source": "org/pinned-lora", "min_workers": 2},
    "broken": {"base": MODEL, "source": "/nonexistent/broken-lora"},
}


def lora_stack(es: ExitStack, tmp_path: Path, max_loras: int = 2) -> Stack:
    worker = ["worker", "--dry-run", "--served-model-name", MODEL, "--speed", "4"]
    worker += ["--enable-lora", "--max-loras", str(max_loras), "--lora-load-s", "0.2"]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    procs = es.enter_context(
        running([make_proc(worker, tmp_path, env=env, name=f"worker{i}") for i in range(2)])
    )
    gateway_env = {
        "VGATE_ENDPOINTS": ",".join(p.url for p in procs),
        "VGATE_HEALTH_INTERVAL_S": "0.2",
        "VGATE_ADAPTERS": json.dumps(ADAPTERS),
        "VGATE_MAX_LORAS": str(max_loras),
        "VGATE_CACHE_MAXSIZE": "0",
    }
    gateway = es.enter_context(
        vgate_process(["gateway"], tmp_path, env=gateway_env, ready_path="/ready", name="gateway")
    )
    return Stack(gateway=gateway, workers=procs, tmp_path=tmp_path)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with ExitStack() as es:
        yield lora_stack(es, tmp_path)


def adapters_stats(stack: Stack) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"http://127.0.0.1:{stack.gateway.internal_port}/stats").json()
    return stats["adapters"]  # type: ignore[no-any-return]


def loaded_on(stack: Stack, worker_url: str) -> set[str]:
    cards = httpx.get(f"{worker_url}/v1/models").json()["data"]
    return {c["id"] for c in cards if c.get("parent")}


def ask(client: openai.OpenAI, model: str, prompt: str = "Say hello") -> str:
    r = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0)
    return r.choices[0].text


def wait_for(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_models_lists_declared_adapters_with_parent(stack: Stack) -> None:
    cards = {c["id"]: c for c in httpx.get(f"{stack.url}/v1/models").json()["data"]}
    assert cards["sql"]["parent"] == MODEL
    assert cards["sql"]["root"] == "org/sql-lora"
    assert cards[MODEL].get("parent") is None


def test_adapter_is_loaded_on_demand_and_keeps_its_worker(stack: Stack) -> None:
    with stack.client() as client:
        base = ask(client, MODEL)
        first = ask(client, "sql")  # no worker has it: loaded while the request waits
        assert first != base
        assert "lora sql" in first
        for i in range(6):
            assert "lora sql" in ask(client, "sql", f"prompt {i}")
    holders = [w.url for w in stack.workers if "sql" in loaded_on(stack, w.url)]
    assert len(holders) == 1  # every request went where it was loaded: one load
    assert adapters_stats(stack)["sql"]["loads"] == 1


def test_undeclared_adapter_is_404(stack: Stack) -> None:
    with stack.client() as client, pytest.raises(openai.NotFoundError) as err:
        ask(client, "not-declared")
    assert err.value.code == "model_not_found"


def test_adapter_no_worker_can_load_is_503_not_a_hang(stack: Stack) -> None:
    started = time.monotonic()
    with stack.client() as client, pytest.raises(openai.InternalServerError) as err:
        ask(client, "broken")
    assert err.value.status_code == 503
    assert err.value.code == "adapter_unavailable"
    assert "No adapter found for /nonexistent/broken-lora" in err.value.message  # vLLM's own words
    assert time.monotonic() - started < 10
    assert adapters_stats(stack)["broken"]["load_failures"] == 2  # tried on both workers
    assert "could not load adapter broken: HTTP 404: No adapter found for /nonexistent/broken-lora" in (
        stack.gateway.log()
    )


def test_min_workers_keeps_an_adapter_loaded_everywhere(stack: Stack) -> None:
    wait_for(lambda: all("pinned" in loaded_on(stack, w.url) for w in stack.workers))


def test_full_slots_unload_the_least_recently_used(stack: Stack) -> None:
    wait_for(lambda: all("pinned" in loaded_on(stack, w.url) for w in stack.workers))
    with stack.client() as client:
        for name in ("sql", "poet", "chef", "sql"):
            assert f"lora {name}" in ask(client, name)
    # Two slots each, one taken by the pinned adapter: three adapters fit on two workers only
    # by unloading, and never the pinned one.
    for w in stack.workers:
        held = loaded_on(stack, w.url)
        assert "pinned" in held
        assert len(held) <= 2
    assert adapters_stats(stack)["pinned"]["unloads"] == 0
    assert sum(s["unloads"] for s in adapters_stats(stack).values()) >= 1


def test_an_adapter_the_gateway_does_not_declare_is_unloaded(stack: Stack) -> None:
    worker = stack.workers[0].url
    r = httpx.post(f"{worker}/v1/load_lora_adapter", json={"lora_name": "stray", "lora_path": "org/stray"})
    assert r.status_code == 200
    wait_for(lambda: "stray" not in loaded_on(stack, worker))
    with stack.client() as client, pytest.raises(openai.NotFoundError):
        ask(client, "stray")


def test_a_crowded_adapter_is_loaded_on_one_more_worker(stack: Stack) -> None:
    with stack.client() as client:
        ask(client, "poet")
    assert sum("poet" in loaded_on(stack, w.url) for w in stack.workers) == 1

    async def crowd() -> None:
        async with openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0) as client:
            streams = [
                await client.completions.create(
                    model="poet",
                    prompt=f"poem {i}",
                    max_tokens=400,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
                for i in range(10)
            ]
            for s in streams:
                async for _ in s:
                    pass

    asyncio.run(crowd())
    assert all("poet" in loaded_on(stack, w.url) for w in stack.workers)
    assert adapters_stats(stack)["poet"]["loads"] == 2
