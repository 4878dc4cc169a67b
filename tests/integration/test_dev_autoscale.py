"""``vgate dev --autoscale``: the operator's policy starts and stops local dry-run workers on load."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import MODEL
from tests.support.procs import make_proc, wait_http
from tests.support.waiting import wait_until

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 64}


def workers_of(pid: int) -> list[str]:
    out = subprocess.run(
        ["ps", "-o", "args=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return [line for line in out.stdout.splitlines() if "worker" in line and "--dry-run" in line]


async def burst(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(client.post(f"{url}/v1/chat/completions", json=CHAT) for _ in range(n)))


def test_autoscale_from_zero_holds_requests_answers_them_and_returns_to_zero(tmp_path: Path) -> None:
    argv = ["dev", "--autoscale", "0:3", "--autoscale-target", "2", "--cold-start", "2",
            "--scale-down-delay", "4", "--scale-to-zero-delay", "6", "--worker-arg=--speed=0.5"]  # fmt: skip
    dev = make_proc(argv, tmp_path).spawn()
    popen = dev.popen
    assert popen is not None
    try:
        wait_http(f"{dev.url}/ready", timeout=60, proc=dev)
        # vgate dev prints its banner after its own readiness poll, which may come later than ours.
        wait_until(lambda: "0..3 autoscaled dry-run workers" in dev.log(), within=10, what="the banner")
        assert workers_of(popen.pid) == []  # at zero: nothing runs until a request comes
        started = time.monotonic()
        answers = asyncio.run(burst(dev.url, 6))
        took = time.monotonic() - started
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
        assert took >= 2  # every request waited in the queue through the workers' cold start
        log = dev.log()
        assert f"{MODEL}: scaling 0 → 2 (" in log  # 6 queued, at most 2x per step
        assert "scale from zero on the first request" in log
        # Idle: back to zero after the delay, the worker processes stopped.
        wait_until(lambda: "→ 0 (" in dev.log(), within=60, what="the scale to zero")
        wait_until(lambda: workers_of(popen.pid) == [], within=15, what="the workers to stop")
        popen.send_signal(signal.SIGTERM)
        assert popen.wait(timeout=20) == 0
    finally:
        dev.stop(sig=signal.SIGKILL)


@pytest.mark.parametrize("bounds", ["3:1", "x:2", "0:0", "2"])
def test_autoscale_bounds_are_checked(bounds: str, tmp_path: Path) -> None:
    dev = make_proc(["dev", "--autoscale", bounds], tmp_path).spawn()
    assert dev.popen is not None
    assert dev.popen.wait(timeout=30) == 2
    assert "--autoscale" in dev.log()


def test_a_dry_run_worker_refuses_connections_until_its_cold_start_is_over(tmp_path: Path) -> None:
    worker = make_proc(["worker", "--dry-run", "--startup-delay-s", "2"], tmp_path).spawn()
    started = time.monotonic()
    try:
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # as vLLM: the port is not listening while it loads
            httpx.get(f"{worker.url}/health", timeout=1)
        wait_http(f"{worker.url}/v1/models", timeout=30, proc=worker)
        assert time.monotonic() - started >= 2
    finally:
        worker.stop()
