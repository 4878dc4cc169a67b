"""The request path's bookkeeping: counters a scrape sees, and the watch for clients that leave."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from vgate_gateway.front.edge import WATCH_AFTER_S, ClientWatch
from vgate_gateway.metrics import MULTIPROCESS_ENV, Metrics

URL = "http://10.0.0.1:8000"


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> Metrics:
    monkeypatch.delenv(MULTIPROCESS_ENV, raising=False)
    return Metrics("test")


def test_counts_on_the_request_path_are_all_in_every_read_of_the_registry(metrics: Metrics) -> None:
    labels = {"upstream": URL, "status": "200"}
    for _ in range(3):
        metrics.count_upstream(URL, 200)
    metrics.inflight.inc()
    metrics.inflight.inc()
    metrics.inflight.dec()
    assert metrics.registry.get_sample_value("vgate_upstream_requests_total", labels) == 3
    assert metrics.registry.get_sample_value("vgate_inflight_requests") == 1
    metrics.count_upstream(URL, 200)  # counted after a read: in the next read, once
    text = generate_latest(metrics.registry).decode()
    assert 'vgate_upstream_requests_total{status="200",upstream="http://10.0.0.1:8000"} 4.0' in text
    assert metrics.registry.get_sample_value("vgate_upstream_requests_total", labels) == 4
    metrics.per_model("m")[2].inc(5)
    assert metrics.registry.get_sample_value("vgate_tokens_generated_total", {"model": "m"}) == 5


def test_the_request_latency_histogram_reads_as_prometheus_clients_own(metrics: Metrics) -> None:
    """Counted in plain Python with one process, it scrapes exactly as prometheus_client's would."""
    reference = CollectorRegistry()
    bounds = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
    theirs = Histogram(
        "vgate_request_latency_seconds",
        "Time from request to the last response byte",
        ["endpoint"],
        buckets=bounds,
        registry=reference,
    )
    for value in (0.0, 0.005, 0.0051, 0.3, 1, 299.9, 300, 301, 10_000):  # on, between and past the bounds
        for endpoint in ("/v1/chat/completions", "/v1/models"):
            metrics.latency.labels(endpoint).observe(value)
            theirs.labels(endpoint).observe(value)

    def lines(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [line for line in text.splitlines() if "latency" in line and "_created" not in line]

    assert lines(metrics.registry) == lines(reference)
    assert len(lines(reference)) == 2 + 2 * (len(bounds) + 3)  # HELP, TYPE; buckets, +Inf, count, sum


def test_a_forgotten_worker_leaves_no_series_and_no_counts_behind(metrics: Metrics) -> None:
    metrics.count_upstream(URL, 200)
    metrics.count_upstream(URL, "timeout")
    metrics.forget_upstream(URL)
    assert "10.0.0.1" not in generate_latest(metrics.registry).decode()
    metrics.count_upstream(URL, 200)  # the worker came back: counted afresh
    labels = {"upstream": URL, "status": "200"}
    assert metrics.registry.get_sample_value("vgate_upstream_requests_total", labels) == 1


class _Client:
    """An ASGI receive channel whose client leaves when told to."""

    def __init__(self) -> None:
        self.reads = 0
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def test_quick_answers_are_never_watched_and_slow_ones_are_cancelled_when_the_client_leaves() -> None:
    watch = ClientWatch()
    quick = _Client()
    for _ in range(100):
        watched = watch.start(quick.receive)
        watch.stop(watched)
    assert quick.reads == 0  # no watcher was started for answers done at once

    slow = _Client()
    outcome: dict[str, Any] = {}

    async def request() -> None:
        watched = watch.start(slow.receive)
        try:
            await asyncio.sleep(60)  # an answer still being generated
        except asyncio.CancelledError:
            outcome["left"] = watched.left
            watched.task.uncancel()
        finally:
            watch.stop(watched)

    task = asyncio.create_task(request())
    await asyncio.sleep(WATCH_AFTER_S * 1.5)
    assert slow.reads == 1  # watched once it had run past WATCH_AFTER_S
    slow.gone.set()
    await asyncio.wait_for(task, 5)
    assert outcome == {"left": True}


async def test_a_request_that_ends_before_its_client_leaves_is_not_cancelled() -> None:
    watch = ClientWatch()
    client = _Client()
    watched = watch.start(client.receive)
    await asyncio.sleep(WATCH_AFTER_S * 1.5)
    assert client.reads == 1
    watch.stop(watched)
    client.gone.set()
    await asyncio.sleep(0.01)
    assert not watched.left
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
