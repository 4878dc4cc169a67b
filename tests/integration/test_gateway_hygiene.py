"""Resources and secrets: a client that leaves frees its worker slot; logs keep prompts and keys out."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from tests.integration.conftest import MODEL, Stack, start_stack
from tests.support.metrics import metric
from tests.support.waiting import wait_workers_idle


@pytest.fixture(scope="module")
def json_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with ExitStack() as es:
        yield start_stack(es, tmp_path_factory.mktemp("hygiene"), gateway_env={"VGATE_LOG_JSON": "true"})


def _running(stack: Stack) -> float:
    """Requests the workers are generating for right now, from their own vLLM metrics."""
    return sum(metric(w.url, "vllm:num_requests_running") for w in stack.workers)


LONG = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "go on"}],
    "max_tokens": 3000,
    "ignore_eos": True,
}


def test_leaving_a_stream_stops_generation_upstream(json_stack: Stack) -> None:
    with httpx.stream("POST", f"{json_stack.url}/v1/chat/completions", json={**LONG, "stream": True}) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
        assert _running(json_stack) == 1
    wait_workers_idle(json_stack.workers)


def test_leaving_a_non_streamed_request_stops_generation_upstream(json_stack: Stack) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{json_stack.url}/v1/chat/completions", json=LONG, timeout=httpx.Timeout(5, read=0.5))
    wait_workers_idle(json_stack.workers)


def test_json_logs_carry_request_ids_but_no_prompt_or_key(json_stack: Stack) -> None:
    secret_prompt = "my-very-private-prompt-text"
    api_key = "sk-test-secret-key-123"
    r = httpx.post(
        f"{json_stack.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": secret_prompt}], "max_tokens": 2},
        headers={"authorization": f"Bearer {api_key}", "x-request-id": "trace-42"},
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "trace-42"
    time.sleep(0.2)
    log = json_stack.gateway.log()
    assert secret_prompt not in log
    assert api_key not in log
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [r for r in records if r.get("request_id") == "trace-42"]
    assert access, "no log line carries the request id"
    assert {"timestamp", "level", "logger", "message"} <= access[0].keys()
