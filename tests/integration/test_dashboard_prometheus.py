"""The shipped Grafana dashboard and the alert expressions, evaluated by a real Prometheus.

Prometheus (Debian's binary, started by the test) scrapes a running local stack — a gateway
and two dry-run workers — on the paths and ports the chart's ServiceMonitor and PodMonitor
use, after real traffic through the gateway with the official ``openai`` client. Then every
query of every panel goes through Prometheus' HTTP API and must return series carrying the
labels its legend shows, with a value (a panel with no events reads 0, never "No data");
every alert expression must evaluate, read only metrics that exist, and stay quiet on the
healthy fleet. A metric renamed in the code fails here.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import openai
import pytest

from tests.integration.conftest import MODEL, Stack, start_stack
from tests.support.alert_rules import alert_rules
from tests.support.chart import CHART
from tests.support.prometheus import LEGEND_LABEL, Prometheus, finite, metric_names, prometheus
from tests.support.waiting import wait_until
from vgate.monitoring import LOCAL_NAMESPACE, Targets

pytestmark = pytest.mark.timeout(120)

#: Metrics an alert reads that no local process exports, and where they are proven instead.
NOT_IN_LOCAL_STACK = {
    "vgate_operator_reconciles_total": "the operator needs a cluster: tests/integration/test_operator_kmock.py",
}
RATE_INTERVAL = "1m"
#: Counters the traffic below feeds: the panels' rates and quantiles read them.
FED = (
    "vgate_request_latency_seconds_count",
    "vgate_ttft_seconds_count",
    "vgate_tpot_seconds_count",
    "vgate_tokens_generated_total",
    "vgate_batch_size_count",
    "vgate_queue_wait_seconds_count",
    "vgate_deduplicated_requests_total",
    "vgate_cache_hits_total",
    "vllm:time_to_first_token_seconds_count",
    "vllm:generation_tokens_total",
)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Prometheus]]:
    tmp = tmp_path_factory.mktemp("monitored")
    # Two requests at once per worker: a burst of streams waits in the model's queue.
    env = {"VGATE_BATCH_WAIT_MS": "100", "VGATE_RATE_LIMIT_RPM": "1000000", "VGATE_WORKER_CAPACITY": "2"}
    with ExitStack() as es:
        stack = start_stack(es, tmp, gateway_env=env)
        targets = Targets(
            gateway=f"127.0.0.1:{stack.gateway.internal_port}",
            workers=[f"127.0.0.1:{w.port}" for w in stack.workers],
        )
        prom = es.enter_context(prometheus(targets, tmp))
        wait_until(
            prom.targets_up, within=30, interval=0.5, what="Prometheus scraping the gateway and both workers"
        )
        # Two rounds, as under steady traffic: the first creates the series, the second makes
        # them rise between scrapes (rate() sees no increase in a series born at its final value).
        asyncio.run(_traffic(stack, "first"))
        for name in FED:
            prom.wait_for(f"count({name}) > 0")
        asyncio.run(_traffic(stack, "second"))
        for name in FED:
            prom.wait_for(f"sum(increase({name}[{RATE_INTERVAL}])) > 0")
        yield stack, prom


async def _traffic(stack: Stack, tag: str) -> None:
    """What a fleet sees: chat, streams, identical and deterministic requests, completions, embeddings."""
    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions
    try:
        await client.completions.create(model=MODEL, prompt="warm-up", max_tokens=2, temperature=0.5)
        await asyncio.gather(
            *(
                client.completions.create(
                    model=MODEL, prompt=f"{tag} batch {i}", max_tokens=8, temperature=0.5
                )
                for i in range(6)
            )
        )
        same = [{"role": "user", "content": f"{tag}: everyone asks this"}]
        await asyncio.gather(
            *(chat.create(model=MODEL, messages=same, max_tokens=16, temperature=0) for _ in range(10))
        )
        await chat.create(model=MODEL, messages=same, max_tokens=16, temperature=0)  # a cache hit

        async def stream(i: int) -> None:
            answer = await chat.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"{tag} stream {i}"}],
                max_tokens=12,
                stream=True,
            )
            async for _ in answer:
                pass

        await asyncio.gather(*(stream(i) for i in range(8)))  # more than the two workers take at once
        await client.embeddings.create(model=MODEL, input=f"{tag}: embed me")
        with pytest.raises(openai.NotFoundError):
            await chat.create(model="no-such-model", messages=same)
    finally:
        await client.close()


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads((CHART / "dashboards" / "vgate.json").read_text())
    return dashboard


def _panel_queries() -> list[tuple[str, str, str]]:
    """(panel title, expr, legend) of every query of every panel."""
    return [
        (p["title"], t["expr"], t.get("legendFormat", ""))
        for p in _dashboard()["panels"]
        for t in p.get("targets", [])
    ]


def _concrete(expr: str, namespace: str) -> str:
    """Grafana's variables, as Grafana substitutes them for one selected namespace."""
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$namespace", namespace)


def test_the_namespace_variable_lists_the_scraped_namespace(monitored: tuple[Stack, Prometheus]) -> None:
    _, prom = monitored
    variable = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "namespace")
    metric = variable["definition"].removeprefix("label_values(").split(",")[0]
    assert prom.label_values("namespace", metric) == [LOCAL_NAMESPACE]


def test_every_panel_query_returns_series_with_its_legend_labels(monitored: tuple[Stack, Prometheus]) -> None:
    _, prom = monitored
    empty, broken = [], []
    for title, expr, legend in _panel_queries():
        names = metric_names(expr)
        assert names, f"{title}: reads no V-Gate or vLLM metric"
        result = prom.query(_concrete(expr, LOCAL_NAMESPACE))
        if not result:
            empty.append(f"{title}: {expr}")
            continue
        for label in LEGEND_LABEL.findall(legend):
            missing = [s["metric"] for s in result if label not in s["metric"]]
            if missing:
                broken.append(f"{title}: legend {{{{{label}}}}} but series {missing}")
        if not all(finite(s) for s in result):
            broken.append(f"{title}: NaN in {expr}")
    assert not empty, "panels reading 'No data' on a healthy fleet with traffic:\n" + "\n".join(empty)
    assert not broken, "\n".join(broken)


def test_the_error_ratio_panel_reads_zero_when_nothing_failed(monitored: tuple[Stack, Prometheus]) -> None:
    _, prom = monitored
    (expr,) = [e for t, e, _ in _panel_queries() if t == "Error ratio (5xx)"]
    # A starting gateway's /ready answers 503 to the stack's own readiness poll: not traffic.
    answered_5xx = 'vgate_requests_total{status=~"5..", endpoint!~"/health|/ready"}'
    assert not prom.query(answered_5xx), "the traffic had a 5xx"
    (series,) = prom.query(_concrete(expr, LOCAL_NAMESPACE))
    assert float(series["value"][1]) == 0.0


def test_every_alert_reads_existing_metrics_and_is_quiet_on_a_healthy_fleet(
    monitored: tuple[Stack, Prometheus],
) -> None:
    _, prom = monitored
    for name, rule in alert_rules().items():
        firing = prom.query(rule["expr"])
        assert not firing, f"{name} would fire on a healthy fleet: {firing}"
        for metric in metric_names(rule["expr"]) - NOT_IN_LOCAL_STACK.keys():
            assert prom.query(f"count({{__name__={metric!r}}})"), (
                f"{name} reads {metric}, which nobody exports"
            )


def test_a_dead_worker_shows_in_the_alert_and_the_panel(monitored: tuple[Stack, Prometheus]) -> None:
    """Last in the module: it kills a worker of the shared stack."""
    stack, prom = monitored
    dead = stack.workers[0]
    dead.stop(signal.SIGKILL)
    rules = alert_rules()
    out = rules["VGateWorkerOutOfRotation"]["expr"]
    (series,) = prom.wait_for(out)
    assert series["metric"]["upstream"] == dead.url
    (healthy,) = [e for t, e, _ in _panel_queries() if t == "Healthy workers per model"][:1]
    (per_model,) = prom.query(_concrete(healthy, LOCAL_NAMESPACE))
    assert per_model["metric"]["model"] == MODEL
    wait_until(
        lambda: float(prom.query(_concrete(healthy, LOCAL_NAMESPACE))[0]["value"][1]) == 1.0,
        within=30,
        interval=0.5,
        what="one healthy worker left in the panel",
    )
    assert not prom.query(rules["VGateModelUnavailable"]["expr"]), "the model still has a worker"
