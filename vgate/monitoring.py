"""A real Prometheus beside the local stack: ``vgate dev --monitoring`` and the dashboard tests.

It scrapes what the chart's ServiceMonitor and PodMonitor scrape in a cluster: ``/metrics``
on the gateway's internal port (the ServiceMonitor's port ``internal``) and vLLM's
``/metrics`` on each worker's serving port (the PodMonitor's port ``http``). A cluster's
Prometheus adds a ``namespace`` label to every series; so does this one, so the dashboard's
``$namespace`` variable and the alerts' ``by (namespace)`` read the same here.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vgate.procs import Child, start, wait_http

#: The path both monitors of the chart scrape (charts/vgate/templates/*monitor.yaml).
METRICS_PATH = "/metrics"
GATEWAY_JOB = "vgate-gateway"
WORKERS_JOB = "vgate-workers"
#: What a cluster's Prometheus would put in ``namespace``; any single name does locally.
LOCAL_NAMESPACE = "vgate-dev"
INSTALL_HINT = (
    "Prometheus is not installed: `make monitoring-tools` installs it (Debian's prometheus package), "
    "or put a prometheus binary on PATH"
)


@dataclass(frozen=True)
class Targets:
    """host:port of the gateway's internal listener and of each worker."""

    gateway: str
    workers: Sequence[str]


def scrape_config(targets: Targets, interval: str = "5s") -> dict[str, Any]:
    """The prometheus.yml for ``targets``, one job per monitor of the chart."""

    def job(name: str, hosts: Sequence[str]) -> dict[str, Any]:
        return {
            "job_name": name,
            "metrics_path": METRICS_PATH,
            "static_configs": [{"targets": list(hosts), "labels": {"namespace": LOCAL_NAMESPACE}}],
        }

    timeout = interval if _seconds(interval) <= 10 else "10s"
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": timeout, "evaluation_interval": interval},
        "scrape_configs": [job(GATEWAY_JOB, [targets.gateway]), job(WORKERS_JOB, targets.workers)],
    }


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if duration.endswith(suffix):
            return float(duration[: -len(suffix)]) * units[suffix]
    raise ValueError(f"not a Prometheus duration: {duration!r}")


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def start_prometheus(
    targets: Targets,
    port: int,
    workdir: Path,
    *,
    interval: str = "5s",
    log: Path | None = None,
    group: bool = True,
) -> Child:
    """Start Prometheus on 127.0.0.1:``port`` scraping ``targets``; its data lives in ``workdir``."""
    binary = prometheus_binary()
    if binary is None:
        raise FileNotFoundError(INSTALL_HINT)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets, interval), sort_keys=False))
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ]
    return start(argv, log=log, group=group)


def wait_ready(child: Child, port: int, timeout: float = 30.0) -> None:
    """Until Prometheus answers its readiness endpoint (the TSDB is open)."""
    wait_http(f"http://127.0.0.1:{port}/-/ready", timeout, alive=child.alive, detail=child.log_tail)
