"""Per-model fleet gauges, computed from the upstream pool when Prometheus scrapes.

``vgate_upstream_healthy`` is per worker URL and says nothing about which model is left
without a worker; these two answer that, so an alert can say "model X has no healthy worker".
They are read from the pool at scrape time, so the request path and the health checks pay
nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vgate_gateway.upstream.pool import UpstreamPool


class FleetCollector(Collector):
    """``vgate_model_upstreams{model}`` and ``vgate_model_healthy_upstreams{model}``."""

    def __init__(self, pool: UpstreamPool, declared_models: Iterable[str] = ()) -> None:
        self._pool = pool
        # Models the configuration names (Kubernetes discovery): reported at 0 even with no worker at all.
        self._declared = frozenset(declared_models)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        total: dict[str, int] = dict.fromkeys(self._declared, 0)
        healthy: dict[str, int] = dict.fromkeys(self._declared, 0)
        for up in self._pool.all():
            for model in up.models:
                total[model] = total.get(model, 0) + 1
                healthy[model] = healthy.get(model, 0) + (1 if up.routable else 0)
        known = GaugeMetricFamily(
            "vgate_model_upstreams", "Workers the gateway knows for a model, healthy or not", labels=["model"]
        )
        ok = GaugeMetricFamily(
            "vgate_model_healthy_upstreams",
            "Workers of a model that pass health checks and take requests",
            labels=["model"],
        )
        for model in sorted(total):
            known.add_metric([model], total[model])
            ok.add_metric([model], healthy[model])
        yield known
        yield ok
