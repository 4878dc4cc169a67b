"""Scraping each worker's vLLM ``/metrics`` into :attr:`Upstream.load`.

The ``least-load`` and ``prefix-aware`` strategies weigh a worker's own view of its load
(requests queued inside vLLM, KV-cache usage) next to the gateway's count of its
outstanding requests: with several gateway replicas, only the worker sees all of its
traffic. Scrapes are cheap GETs on a short interval; a worker that does not answer
keeps its last figures, which the strategies ignore once they are stale.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable

import httpx

from vgate_gateway.upstreams import LoadStats, Upstream, UpstreamPool

log = logging.getLogger(__name__)

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
#: The name vLLM used for the KV-cache gauge before it became device-neutral.
KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"


def metric_sums(text: str, names: Iterable[str]) -> dict[str, float]:
    """Sum of each named series over all its label sets, from Prometheus text exposition.

    A line scan rather than a full parse: a worker's exposition is mostly histogram
    buckets the gateway never reads. Names absent from ``text`` are absent from the result.
    """
    wanted = set(names)
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        if brace >= 0:
            name, rest = line[:brace], line[line.rfind("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        if name not in wanted:
            continue
        fields = rest.split()
        try:
            value = float(fields[0])
        except (IndexError, ValueError):
            continue
        if math.isfinite(value):
            sums[name] = sums.get(name, 0.0) + value
    return sums


def parse_load(text: str, now: float) -> LoadStats | None:
    """The load a vLLM worker reports, or None when ``text`` has none of vLLM's gauges."""
    sums = metric_sums(text, (RUNNING, WAITING, KV_USAGE, KV_USAGE_OLD))
    if not sums:
        return None
    kv = sums.get(KV_USAGE, sums.get(KV_USAGE_OLD, 0.0))
    return LoadStats(
        num_running=sums.get(RUNNING, 0.0),
        num_waiting=sums.get(WAITING, 0.0),
        # One worker serving several model names reports one series per name.
        kv_cache_usage=min(max(kv, 0.0), 1.0),
        scraped_at=now,
    )


class LoadScraper:
    """Keeps :attr:`Upstream.load` current for every healthy upstream of a pool."""

    def __init__(
        self,
        pool: UpstreamPool,
        client: httpx.AsyncClient,
        *,
        interval_s: float = 1.0,
        timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._client = client
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._failing: set[str] = set()

    async def scrape(self, upstream: Upstream) -> bool:
        """Read one worker's ``/metrics``; returns whether its load was updated."""
        try:
            resp = await self._client.get(upstream.url + "/metrics", timeout=self.timeout_s)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            if upstream.url not in self._failing:  # log a change, not every interval
                log.info("cannot read load of %s: %s", upstream.url, type(exc).__name__)
                self._failing.add(upstream.url)
            return False
        self._failing.discard(upstream.url)
        load = parse_load(resp.text, self._clock())
        if load is None:
            return False
        upstream.load = load
        return True

    async def scrape_all(self) -> int:
        """Scrape every healthy upstream concurrently; returns how many were updated."""
        targets = [u for u in self._pool.all() if u.healthy]
        results = await asyncio.gather(*(self.scrape(u) for u in targets))
        known = {u.url for u in self._pool.all()}
        self._failing &= known
        return sum(results)

    async def run(self) -> None:
        """Scrape on an interval until cancelled (a lifespan background task)."""
        while True:
            started = self._clock()
            await self.scrape_all()
            await asyncio.sleep(max(0.0, self.interval_s - (self._clock() - started)))
