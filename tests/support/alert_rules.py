"""The chart's alert rules as Prometheus reads them, and input series for ``promtool test rules``.

The rules come from the chart rendered by Helm's own engine (the file a PrometheusRule
holds), never from a copy. Input series are built from the metric objects the gateway, the
simulator and the operator really register: their names, label names and histogram bucket
edges are read from those objects' exposition, so a renamed metric or label breaks the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.chart import manifests
from vgate_gateway.efficiency.pipeline import PipelineMetrics
from vgate_gateway.front.ratelimit import RateLimitMetrics
from vgate_gateway.metrics import Metrics
from vgate_gateway.ops.fleet_metrics import FleetCollector
from vgate_gateway.settings import GatewaySettings
from vgate_gateway.upstream.dispatch import Dispatcher, QueueDepth, QueueMetrics
from vgate_gateway.upstream.pool import DiscoveredEndpoint, UpstreamPool
from vgate_gateway.upstream.routing import Router
from vgate_operator.metrics import OperatorMetrics
from vgate_worker.sim.metrics import SimMetrics

RULE_TEMPLATE = "vgate/templates/prometheusrule.yaml"
#: Labels Prometheus itself (the Prometheus Operator's ServiceMonitor/PodMonitor) adds to every series.
TARGET_LABELS = frozenset({"namespace", "pod", "instance", "job", "service", "endpoint", "container"})


def rendered_rules(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The rule file (``{"groups": [...]}``) of the PrometheusRule the chart renders."""
    merged = {"metrics": {"prometheusRule": {"enabled": True}}}
    if values:
        merged["metrics"]["prometheusRule"].update(values)
    rule = yaml.safe_load(manifests(merged)[RULE_TEMPLATE])
    assert rule["kind"] == "PrometheusRule"
    return {"groups": rule["spec"]["groups"]}


def alert_rules(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """alert name -> rule, as rendered."""
    return {r["alert"]: r for g in rendered_rules(values)["groups"] for r in g["rules"]}


def exported_series() -> dict[str, frozenset[str]]:
    """Sample name -> label names, from the real metric objects after one observation each."""
    registry = CollectorRegistry()
    metrics = Metrics("0", registry)
    PipelineMetrics.register(registry)
    limits = RateLimitMetrics(registry)
    pool = UpstreamPool(eject_after=3, panic_threshold=0.5)
    pool.replace([DiscoveredEndpoint("http://w:8000", frozenset({"m"}))])
    metrics.register_live(FleetCollector(pool))
    dispatcher = Dispatcher(GatewaySettings(models=["m"]), pool, _router(pool), QueueMetrics(registry))
    metrics.register_live(QueueDepth(dispatcher))
    ttft, tpot, tokens = metrics.per_model("m")
    ttft.observe(0.1)
    tpot.observe(0.01)
    tokens.inc()
    metrics.requests.labels("/v1/chat/completions", "POST", "200").inc()
    metrics.latency.labels("/v1/chat/completions").observe(0.1)
    metrics.count_upstream("http://w:8000", 200)
    metrics.upstream_healthy.labels("http://w:8000").set(1)
    limits.redis_up.set(1)
    limits.count("k", allowed=False)
    texts = [generate_latest(registry), generate_latest(OperatorMetrics().registry)]
    sim = SimMetrics.create("m")
    sim.time_to_first_token.observe(0.1)
    texts.append(generate_latest(sim.registry))
    series: dict[str, set[str]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in series.items()}


def bucket_edges(metric: str) -> list[str]:
    """The ``le`` values the code gives histogram ``metric`` (as Prometheus prints them)."""
    registry = CollectorRegistry()
    metrics = Metrics("0", registry)
    metrics.per_model("m")[0].observe(0.1)
    sim = SimMetrics.create("m")
    sim.time_to_first_token.observe(0.1)
    for text in (generate_latest(registry), generate_latest(sim.registry)):
        for family in text_string_to_metric_families(text.decode()):
            les = [s.labels["le"] for s in family.samples if s.name == f"{metric}_bucket"]
            if les:
                return les
    raise KeyError(metric)


def _selector(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


@dataclass
class Series:
    """Input series of one promtool test, one sample a minute."""

    minutes: int = 40
    items: list[dict[str, str]] = field(default_factory=list)

    def gauge(self, name: str, labels: dict[str, str], value: float) -> Series:
        self.items.append({"series": _selector(name, labels), "values": f"{value:g}x{self.minutes}"})
        return self

    def counter(self, name: str, labels: dict[str, str], per_minute: float) -> Series:
        self.items.append({"series": _selector(name, labels), "values": f"0+{per_minute:g}x{self.minutes}"})
        return self

    def once(self, name: str, labels: dict[str, str], at_minute: int) -> Series:
        """A counter that steps from 0 to 1 once, at ``at_minute``, then stays."""
        values = ["0"] * at_minute + ["1"] * (self.minutes + 1 - at_minute)
        self.items.append({"series": _selector(name, labels), "values": " ".join(values)})
        return self

    def histogram(
        self, name: str, labels: dict[str, str], edges: list[str], value: float, per_minute: int
    ) -> Series:
        """``per_minute`` observations of ``value`` a minute, in the cumulative buckets ``edges``."""
        for le in edges:
            hits = per_minute if value <= float(le) else 0
            self.counter(f"{name}_bucket", {**labels, "le": le}, hits)
        self.counter(f"{name}_count", labels, per_minute)
        return self.counter(f"{name}_sum", labels, per_minute * value)


def _router(pool: UpstreamPool) -> Router:
    return Router(pool, "round-robin", session_header="x-session-id", retry_after_s=1)
