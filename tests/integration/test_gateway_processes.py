"""``VGATE_PROCESSES=N``: N serving processes share the gateway's port and its metrics."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import MODEL, Stack, start_stack


@pytest.fixture
def two_process_gateway(tmp_path: Path) -> Iterator[Stack]:
    with ExitStack() as es:
        yield start_stack(es, tmp_path, gateway_env={"VGATE_PROCESSES": "2"})


def _serving_processes(stack: Stack) -> int:
    assert stack.gateway.popen is not None
    out = subprocess.run(
        ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(stack.gateway.popen.pid)],
        capture_output=True,
        text=True,
        check=False,
    )
    return sum("spawn_main" in line for line in out.stdout.splitlines())


def test_two_serving_processes_answer_and_one_scrape_counts_them_all(two_process_gateway: Stack) -> None:
    stack = two_process_gateway
    assert _serving_processes(stack) == 2
    client = stack.client()
    for _ in range(20):  # new connections each time: both processes take some
        with httpx.Client() as fresh:
            r = fresh.post(
                f"{stack.url}/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            )
            assert r.status_code == 200
    assert client.models.list().data[0].id == MODEL
    text = httpx.get(f"{stack.gateway.internal_url}/metrics").text
    name = 'vgate_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"}'
    counts = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    assert counts == [20.0]  # whichever process answered the scrape counts both processes' requests
    assert 'vgate_info{version="' in text
    # The per-model fleet gauges come from the scraped process's own view, once.
    healthy = f'vgate_model_healthy_upstreams{{model="{MODEL}"}}'
    assert [line for line in text.splitlines() if line.startswith(healthy)] == [f"{healthy} 2.0"]


def test_the_old_name_still_starts_the_processes_with_a_warning(tmp_path: Path) -> None:
    with ExitStack() as es:
        stack = start_stack(es, tmp_path, workers=1, gateway_env={"VGATE_WORKERS": "2"})
        assert _serving_processes(stack) == 2
        log = stack.gateway.log()
    assert log.count("VGATE_WORKERS / --workers / workers is deprecated") == 1  # once, not per process
    assert "use VGATE_PROCESSES / --processes / processes (2 serving processes)" in log
