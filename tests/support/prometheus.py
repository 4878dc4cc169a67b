"""A real Prometheus (Debian's binary) scraping a local stack, and its HTTP query API."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from vgate.monitoring import INSTALL_HINT, Targets, prometheus_binary, start_prometheus, wait_ready
from vgate.procs import Child, free_port

#: Names the dashboard and the alerts may read; anything else in a query is PromQL.
METRIC_NAME = re.compile(r"\b(?:vgate_|vllm:)[A-Za-z0-9_:]*")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass
class Prometheus:
    url: str
    child: Child

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector; a PromQL error fails the test with Prometheus' message."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert response.status_code == 200, f"{promql}\n{body}"
        assert body["status"] == "success", f"{promql}\n{body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        assert body["data"]["resultType"] == "vector", promql
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        response = httpx.get(f"{self.url}/api/v1/label/{label}/values", params={"match[]": match}, timeout=10)
        values: list[str] = response.json()["data"]
        return values

    def targets_up(self) -> bool:
        active = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait_for(self, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until ``promql`` returns series (Prometheus has scraped what it needs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result:
                return result
            time.sleep(0.5)
        raise AssertionError(f"no series for {promql} within {timeout:g}s:\n{self.child.log_tail()}")


@contextmanager
def prometheus(targets: Targets, tmp_path: Path, interval: str = "1s") -> Iterator[Prometheus]:
    """Prometheus scraping ``targets`` for the block; fails (never skips) when it is not installed."""
    if prometheus_binary() is None:
        pytest.fail(INSTALL_HINT)
    port = free_port()
    child = start_prometheus(
        targets, port, tmp_path / "prometheus", interval=interval, log=tmp_path / "prometheus.log"
    )
    try:
        wait_ready(child, port)
        yield Prometheus(f"http://127.0.0.1:{port}", child)
    finally:
        child.stop()


def finite(series: dict[str, Any]) -> bool:
    return not math.isnan(float(series["value"][1]))


def metric_names(promql: str) -> set[str]:
    return set(METRIC_NAME.findall(promql))
