"""The dry-run worker's LoRA adapters: vLLM's runtime load/unload API, model cards, answers, metric."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import Proc, vgate_process
from vgate_worker.settings import DEFAULT_MODEL

pytestmark = pytest.mark.timeout(60)

LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Proc]:
    args = ["worker", "--dry-run", "--enable-lora", "--max-loras", "2", "--lora-load-s", "0.3"]
    with vgate_process(args, tmp_path, env=LORA_ENV) as proc:
        yield proc


def load(sim: Proc, name: str, path: str) -> httpx.Response:
    return httpx.post(f"{sim.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})


def ask(sim: Proc, model: str) -> str:
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0) as client:
        r = client.completions.create(model=model, prompt="Say hello", max_tokens=20, temperature=0)
    return r.choices[0].text


def test_load_list_answer_unload(sim: Proc, tmp_path: Path) -> None:
    adapter_dir = tmp_path / "sql-lora"
    adapter_dir.mkdir()
    r = load(sim, "sql", str(adapter_dir))
    assert r.status_code == 200, r.text
    assert r.text == "Success: LoRA adapter 'sql' added successfully."
    cards = {c["id"]: c for c in httpx.get(f"{sim.url}/v1/models").json()["data"]}
    assert cards["sql"]["parent"] == DEFAULT_MODEL
    assert cards["sql"]["root"] == str(adapter_dir)
    assert cards[DEFAULT_MODEL]["parent"] is None

    base, adapted = ask(sim, DEFAULT_MODEL), ask(sim, "sql")
    assert adapted != base
    assert adapted == ask(sim, "sql")

    twice = load(sim, "sql", str(adapter_dir))
    assert twice.status_code == 400
    assert twice.json()["error"] == {
        "message": "The lora adapter 'sql' has already been loaded.",
        "type": "InvalidUserInput",
        "param": None,
        "code": 400,
    }
    gone = httpx.post(f"{sim.url}/v1/unload_lora_adapter", json={"lora_name": "sql"})
    assert gone.status_code == 200
    assert "removed successfully" in gone.text
    assert "sql" not in {c["id"] for c in httpx.get(f"{sim.url}/v1/models").json()["data"]}
    with pytest.raises(openai.NotFoundError):
        ask(sim, "sql")
    again = httpx.post(f"{sim.url}/v1/unload_lora_adapter", json={"lora_name": "sql"})
    assert again.status_code == 404
    assert again.json()["error"]["type"] == "NotFoundError"


def test_missing_path_and_slot_limit(sim: Proc) -> None:
    missing = load(sim, "nope", "/nonexistent/adapter")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "No adapter found for /nonexistent/adapter"
    assert load(sim, "a", "org/adapter-a").status_code == 200
    assert load(sim, "b", "org/adapter-b").status_code == 200
    full = load(sim, "c", "org/adapter-c")
    assert full.status_code == 400
    assert "--max-loras 2" in full.json()["error"]["message"]


def test_load_takes_its_time_and_metric_names_adapters(sim: Proc) -> None:
    r = load(sim, "slow", "org/slow")
    assert r.status_code == 200
    assert r.elapsed.total_seconds() >= 0.3
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0) as client:
        stream = client.completions.create(
            model="slow", prompt="x", max_tokens=2000, stream=True, extra_body={"ignore_eos": True}
        )
        next(iter(stream))
        text = httpx.get(f"{sim.url}/metrics").text
        stream.close()
    infos = [
        s
        for f in text_string_to_metric_families(text)
        if f.name == "vllm:lora_requests_info"
        for s in f.samples
    ]
    latest = max(infos, key=lambda s: s.value)
    assert latest.labels == {"max_lora": "2", "running_lora_adapters": "slow", "waiting_lora_adapters": ""}


def test_without_runtime_updating_the_endpoints_do_not_exist(tmp_path: Path) -> None:
    with vgate_process(["worker", "--dry-run", "--enable-lora"], tmp_path) as proc:
        assert load(proc, "a", "org/a").status_code == 404
