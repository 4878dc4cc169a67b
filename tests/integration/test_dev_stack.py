"""``vgate dev``: one command brings up the gateway and two dry-run workers, and takes them all down."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL
from tests.support.metrics import metric
from tests.support.procs import make_proc, wait_http
from tests.support.waiting import wait_until
from vgate.procs import free_port


def _free_port_run(length: int) -> int:
    """A port P such that P .. P+length-1 are all free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + length > 65535:
            continue
        try:
            socks = []
            for port in range(base, base + length):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no run of free ports")


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dev_serves_chat_through_two_workers_and_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port_run(4)  # gateway, two workers, the gateway's internal port
    dev = make_proc(["dev"], tmp_path, port=port).spawn()
    assert dev.popen is not None
    try:
        wait_http(f"{dev.url}/ready", timeout=60, proc=dev)
        children = _children(dev.popen.pid)
        assert len(children) == 3  # the gateway and two workers
        client = openai.OpenAI(base_url=f"{dev.url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello!"}])
        assert answer.choices[0].message.content
        streamed = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello!"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)

        dev.popen.send_signal(signal.SIGTERM)
        assert dev.popen.wait(timeout=20) == 0
        assert not [pid for pid in children if _alive(pid)]  # no orphans
        banner = dev.log()
        assert f"http://127.0.0.1:{port}/v1" in banner
        assert "curl" in banner
    finally:
        dev.stop(sig=signal.SIGKILL)


def test_dev_keeps_serving_when_a_worker_dies_and_names_it(tmp_path: Path) -> None:
    port = _free_port_run(4)
    dev = make_proc(["dev"], tmp_path, port=port).spawn()
    assert dev.popen is not None
    try:
        wait_http(f"{dev.url}/ready", timeout=60, proc=dev)
        # Kill one only when both serve, or none may be left (metrics are on the internal port).
        internal = f"http://127.0.0.1:{port + 3}"
        wait_until(
            lambda: metric(internal, "vgate_upstream_healthy", missing=0) == 2, what="both workers healthy"
        )
        out = subprocess.run(
            ["ps", "-o", "pid=,args=", "--ppid", str(dev.popen.pid)],
            capture_output=True,
            text=True,
            check=True,
        )
        victim = next(
            int(line.split()[0]) for line in out.stdout.splitlines() if f"--port {port + 1}" in line
        )
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: f"worker 127.0.0.1:{port + 1} exited" in dev.log(), what="the dead worker named")
        assert dev.popen.poll() is None  # the stack is still up
        client = openai.OpenAI(base_url=f"{dev.url}/v1", api_key="unused", max_retries=0)
        for _ in range(4):  # every request is answered by the worker that is left
            answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
            assert answer.choices[0].message.content
        assert "keeps serving on 1 worker" in dev.log()
    finally:
        dev.stop(sig=signal.SIGTERM)


def test_dev_with_an_api_key_refuses_everyone_else(tmp_path: Path) -> None:
    port = _free_port_run(4)
    dev = make_proc(["dev", "--workers", "1", "--api-key", "sk-dev-key-1"], tmp_path, port=port).spawn()
    try:
        wait_http(f"{dev.url}/ready", timeout=60, proc=dev)
        hello = [{"role": "user", "content": "Hello!"}]
        keyed = openai.OpenAI(base_url=f"{dev.url}/v1", api_key="sk-dev-key-1", max_retries=0)
        assert keyed.chat.completions.create(model=MODEL, messages=hello, max_tokens=2).choices
        stranger = openai.OpenAI(base_url=f"{dev.url}/v1", api_key="sk-other", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            stranger.chat.completions.create(model=MODEL, messages=hello, max_tokens=2)
        # `vgate dev` prints its banner after its own readiness poll, which may trail the test's.
        wait_until(lambda: "V-Gate is up" in dev.log(), what="the banner")
        assert "API keys: required" in dev.log()
        assert "sk-dev-key-1" not in dev.log()
    finally:
        dev.stop()


def test_dev_with_adapters_serves_them_by_name(tmp_path: Path) -> None:
    port = _free_port_run(4)
    args = ["dev", "--workers", "1", "--adapter", "sql", "--adapter", "poet=org/poet-lora"]
    dev = make_proc(args, tmp_path, port=port).spawn()
    try:
        wait_http(f"{dev.url}/ready", timeout=60, proc=dev)
        client = openai.OpenAI(base_url=f"{dev.url}/v1", api_key="unused", max_retries=0)
        cards = {m.id: m for m in client.models.list().data}
        assert cards["poet"].model_extra == {
            **cards["poet"].model_extra,
            "parent": MODEL,
            "root": "org/poet-lora",
        }
        answer = client.completions.create(model="sql", prompt="Say hello", max_tokens=12)
        assert answer.choices[0].text.startswith("[dry-run lora sql] echo:")
    finally:
        dev.stop()


def test_dev_monitoring_runs_prometheus_scraping_the_stack_and_the_status_page(tmp_path: Path) -> None:
    port = _free_port_run(4)
    prometheus_port = free_port()
    dev = make_proc(["dev", "--monitoring", "--prometheus-port", str(prometheus_port)], tmp_path, port=port)
    dev.spawn()
    assert dev.popen is not None
    internal = f"http://127.0.0.1:{port + 3}"
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    try:
        wait_until(lambda: "Prometheus:" in dev.log(), within=60, what="the banner")
        banner = dev.log()
        assert f"Prometheus: {prometheus}" in banner
        assert f"Status page: {internal}/status" in banner
        assert len(_children(dev.popen.pid)) == 4  # the gateway, two workers and Prometheus
        page = httpx.get(f"{internal}/status")
        assert page.status_code == 200
        assert "/stats" in page.text

        def scraped() -> bool:
            targets = httpx.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
            return len(targets) == 3 and all(t["health"] == "up" for t in targets)

        wait_until(scraped, within=30, interval=0.5, what="Prometheus scraping the gateway and both workers")
        query = httpx.get(f"{prometheus}/api/v1/query", params={"query": "vgate_model_healthy_upstreams"})
        (series,) = query.json()["data"]["result"]
        assert series["metric"]["model"] == MODEL
        assert series["value"][1] == "2"
        children = _children(dev.popen.pid)
        dev.popen.send_signal(signal.SIGTERM)
        assert dev.popen.wait(timeout=20) == 0
        assert not [pid for pid in children if _alive(pid)]
    finally:
        dev.stop(sig=signal.SIGKILL)
