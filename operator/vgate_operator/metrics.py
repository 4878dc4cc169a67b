"""The operator's own Prometheus metrics: how its reconciles end.

kopf exports no metrics of its own. Without these, an operator that fails to write a
VGateDeployment's children shows only in its log and in the resource's ``Ready`` condition,
which no alert reads. One counter, by result, on a registry the operator owns (no globals),
served over HTTP by :func:`serve`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, start_http_server

#: Every result a reconcile can end with.
RESULTS = ("ok", "invalid_spec", "error")


class OperatorMetrics:
    """``vgate_operator_reconciles_total{result}``: ``ok``, ``invalid_spec`` or ``error``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "vgate_operator_reconciles",
            "Reconciles of a VGateDeployment, by result: ok, invalid_spec (the user's to fix), "
            "error (the API server refused or failed; kopf retries)",
            ["result"],
            registry=self.registry,
        )
        for result in RESULTS:  # every series exists from the start, so rate() and alerts see 0
            self.reconciles.labels(result)

    def count(self, result: str) -> None:
        self.reconciles.labels(result).inc()


def serve(metrics: OperatorMetrics, port: int, addr: str) -> None:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread (it ends with the process)."""
    start_http_server(port, addr, registry=metrics.registry)
