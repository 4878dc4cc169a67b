"""What every benchmark starts: V-Gate's processes pinned to cores, and reading their metrics."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from vgate import procs
from vgate.procs import free_port, vgate_argv
from vgate.waiting import wait_for
from vgate_gateway.upstream.loadstats import metric_sums


class Gateway(str):
    """A gateway's public URL; ``internal`` is where its /metrics and /stats are."""

    internal: str


#: The gateway under test runs alone on this core; workers and Redis on the others.
SUT_CPU = "0"


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """``cmd`` run on ``cpus`` (a taskset list), or as it is without them or without taskset."""
    if cpus is None or shutil.which("taskset") is None:
        return cmd
    return procs.pinned(cmd, cpus)


def other_cpus() -> str | None:
    """The cores besides :data:`SUT_CPU`, for the workers and Redis."""
    others = sorted(os.sched_getaffinity(0) - {int(SUT_CPU)})
    return ",".join(map(str, others)) if others else None


@contextmanager
def vgate_service(
    args: Sequence[str],
    ready: str,
    env: dict[str, str],
    log: Path,
    *,
    cpus: str | None = None,
    timeout: float = 60.0,
) -> Iterator[str]:
    """Run ``vgate SUBCOMMAND --port P ARGS...`` until the block ends; yields its URL.

    The port goes right after the subcommand, so pass-through arguments after ``--`` stay last.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = pinned(vgate_argv(args[0], "--port", str(port), *args[1:]), cpus)
    with procs.running(argv, url + ready, env={**os.environ, **env}, log=log, timeout=timeout):
        yield url


@contextmanager
def gateway(
    workers: Sequence[str], env: dict[str, str], logs: Path, *, cpus: str | None = None
) -> Iterator[Gateway]:
    """A fresh gateway in front of ``workers``; yields once it routes to every one of them."""
    internal_port = free_port()
    base = {
        "VGATE_ENDPOINTS": ",".join(workers),
        "VGATE_LOG_LEVEL": "warning",
        "VGATE_INTERNAL_PORT": str(internal_port),
    }
    with vgate_service(["gateway"], "/ready", {**base, **env}, logs / "gateway.log", cpus=cpus) as url:
        gw = Gateway(url)
        gw.internal = f"http://127.0.0.1:{internal_port}"
        wait_routable(gw, len(workers))
        yield gw


def wait_routable(gateway: Gateway, workers: int, timeout: float = 30.0) -> None:
    """Wait until the gateway's /stats counts ``workers`` routable upstreams."""

    def routable() -> bool:
        upstreams = httpx.get(gateway.internal + "/stats", timeout=2.0).json().get("upstreams", [])
        return sum(1 for u in upstreams if u.get("routable")) >= workers

    wait_for(routable, f"all {workers} workers to become routable at {gateway}", within=timeout)


async def scrape(urls: Sequence[str], names: Sequence[str]) -> list[dict[str, float]]:
    """Each URL's /metrics (a gateway's internal one), summed over labels for ``names``."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        texts = await asyncio.gather(*(client.get(getattr(u, "internal", u) + "/metrics") for u in urls))
    return [metric_sums(r.text, list(names)) for r in texts]


async def metric_total(urls: Sequence[str], name: str) -> float:
    """The metric ``name`` summed over ``urls``."""
    return sum(s.get(name, 0.0) for s in await scrape(urls, [name]))


def save_results(results: dict[str, Any], out: str | Path, prefix: str, table: str) -> Path:
    """Write ``results`` as ``<out>/<prefix>-<time>.json``, print ``table`` and where it went."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    print(f"\nresults: {path} ({results['wall_s']}s)")
    return path
