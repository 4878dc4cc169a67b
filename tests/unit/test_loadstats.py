"""Reading vLLM's /metrics into the upstreams' load figures, on every health check."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.support.fake_upstreams import Answer, Call, FakeUpstreams
from vgate_gateway.metrics import Metrics
from vgate_gateway.upstream.client import Unreachable
from vgate_gateway.upstream.health import HealthChecker
from vgate_gateway.upstream.loadstats import metric_sums, parse_load
from vgate_gateway.upstream.pool import DiscoveredEndpoint, LoadStats, UpstreamPool

pytestmark = pytest.mark.timeout(10)

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen"} 3.0
vllm:num_requests_running{engine="0",model_name="qwen-alias"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen"} 7.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="qwen"} 0.42
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="qwen"} 0.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="qwen"} 12.0
vllm:prefix_cache_hits_total{engine="0",model_name="qwen"} 512.0
vllm:prefix_cache_queries_total{engine="0",model_name="qwen"} 2048.0
"""


def test_parse_sums_each_gauge_over_its_label_sets() -> None:
    load = parse_load(VLLM_METRICS, now=5.0)
    assert load == LoadStats(num_running=4.0, num_waiting=7.0, kv_cache_usage=0.42, scraped_at=5.0)


def test_older_vllm_kv_gauge_name_is_understood() -> None:
    text = 'vllm:gpu_cache_usage_perc{model_name="q"} 0.9\nvllm:num_requests_waiting 2\n'
    load = parse_load(text, now=1.0)
    assert load is not None
    assert (load.kv_cache_usage, load.num_waiting) == (0.9, 2.0)


def test_text_without_vllm_gauges_is_no_load_report() -> None:
    assert parse_load("# nothing here\nprocess_cpu_seconds_total 3\n", now=1.0) is None
    assert parse_load("", now=1.0) is None


def test_metric_sums_skips_malformed_and_non_finite_values() -> None:
    text = 'a{x="1"} 2\na{x="}"} 3 1700000000\na NaN\na oops\nb 1e3\nab 9\n'
    assert metric_sums(text, ["a", "b"]) == {"a": 5.0, "b": 1000.0}
    assert metric_sums(VLLM_METRICS, ["vllm:prefix_cache_hits_total"]) == {
        "vllm:prefix_cache_hits_total": 512.0
    }


def _pool(*urls: str) -> UpstreamPool:
    pool = UpstreamPool(eject_after=3, panic_threshold=0.5)
    pool.replace([DiscoveredEndpoint(url=u) for u in urls])
    return pool


def _worker(metrics: Answer | None) -> FakeUpstreams:
    """A worker that passes health checks; ``/metrics`` answers ``metrics`` (None: refused)."""

    def handler(call: Call) -> Answer:
        if call.path == "/v1/models":
            return Answer.json({"data": [{"id": "qwen"}]})
        if call.path == "/metrics":
            if metrics is None:
                raise Unreachable("refused")
            return metrics
        return Answer()

    upstreams = FakeUpstreams(handler)
    upstreams.down.add("gone")
    return upstreams


async def _check(pool: UpstreamPool, client: FakeUpstreams) -> None:
    checker = HealthChecker(pool, client, Metrics("test"), interval_s=60, timeout_s=1, clock=lambda: 50.0)
    await checker.check_all()


async def test_health_checks_read_each_workers_load() -> None:
    pool = _pool("http://ok:8000")
    await _check(pool, _worker(Answer(200, VLLM_METRICS.encode(), "text/plain")))
    up = pool.get("http://ok:8000")
    assert up is not None
    assert up.healthy
    assert up.load == LoadStats(num_running=4.0, num_waiting=7.0, kv_cache_usage=0.42, scraped_at=50.0)


@pytest.mark.parametrize("metrics", [Answer(500), None, Answer(200, b"# nothing\n", "text/plain")])
async def test_unreadable_metrics_keep_the_last_figures_and_the_worker_healthy(
    metrics: Answer | None,
) -> None:
    pool = _pool("http://ok:8000")
    stale = LoadStats(num_waiting=1.0, scraped_at=1.0)
    pool.get("http://ok:8000").load = stale  # type: ignore[union-attr]
    await _check(pool, _worker(metrics))
    up = pool.get("http://ok:8000")
    assert up is not None
    assert up.healthy
    assert up.load is stale


async def test_unreachable_worker_is_unhealthy_and_its_load_untouched() -> None:
    pool = _pool("http://gone:8000")
    await _check(pool, _worker(Answer(200, VLLM_METRICS.encode(), "text/plain")))
    up = pool.get("http://gone:8000")
    assert up is not None
    assert not up.healthy
    assert up.load == LoadStats()


async def test_a_worker_leaves_rotation_only_after_failures_in_a_row_and_returns_on_a_pass() -> None:
    pool = UpstreamPool(eject_after=3, panic_threshold=0.5)
    pool.replace([DiscoveredEndpoint(url="http://ok:8000")])
    workers = _worker(Answer(200, VLLM_METRICS.encode(), "text/plain"))
    checker = HealthChecker(pool, workers, Metrics("test"), interval_s=60, timeout_s=1)
    await checker.check_all()
    up = pool.get("http://ok:8000")
    assert up is not None
    assert up.healthy
    workers.down.add("ok")
    for _ in range(2):
        await checker.check_all()
        assert up.healthy  # one or two missed probes are not a dead worker
    await checker.check_all()
    assert not up.healthy
    workers.down.clear()
    await checker.check_all()
    assert up.healthy


@pytest.mark.parametrize(
    ("waiting", "passed"),
    [(True, True), (False, False)],
    ids=[
        "requests-wait: probed often, passes at once",
        "none-wait: the 60 s interval stands, no probing storm",
    ],
)
async def test_a_starting_worker_is_probed_often_only_while_requests_wait(
    waiting: bool, passed: bool
) -> None:
    pool = _pool("http://starting:8000")
    workers = _worker(Answer(200, VLLM_METRICS.encode(), "text/plain"))
    workers.down.add("starting")
    checker = HealthChecker(
        pool,
        workers,
        Metrics("test"),
        interval_s=60,
        timeout_s=1,
        starting_interval_s=0.02,
        waiting=lambda: waiting,
    )
    task = asyncio.create_task(checker.run())
    await asyncio.sleep(0.05)
    workers.down.discard("starting")  # it listens now, long before the next 60 s round
    await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    up = pool.get("http://starting:8000")
    assert up is not None
    assert up.healthy is passed
